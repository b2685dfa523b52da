"""``--triton-repo DIR``: an NVIDIA Triton Inference Server model repository for model.onnx.

Layout (Triton's model repository convention)::

    DIR/<name>/config.pbtxt     onnxruntime backend, dynamic batching, IO from the contract
    DIR/<name>/1/model.onnx     the validated fp32 graph (contract metadata included)
    DIR/ddpm_sampler/...        whole sampling on the Python backend (ddpm.serve.repository):
                                one request -> finished uint8 images, no client-side loop

The UNet model serves clients that drive the loop themselves (one round trip per step); the
``ddpm_sampler`` model runs :class:`ddpm.runtime.Sampler` inside the server.

With ``max_batch_size > 0`` Triton owns the batch axis, so ``dims`` omit it; the per-sample
scalars ``timestep`` / ``class_labels`` (shape (batch,) in the graph) are declared as
``dims: [1]`` with ``reshape: { shape: [] }``, Triton's idiom for batch-only tensors.
The repository is written in a temp folder and moved into place, like every other output.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ddpm.artifact import Contract, TensorSpec
from ddpm.serve.repository import write_model_dir, write_sampler_model

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
DEFAULT_MAX_BATCH = 64


def _tensor_block(s: TensorSpec) -> str:
    dims = [int(d) for d in s.shape[1:]]  # drop the batch axis: Triton batches it
    lines = [f'    name: "{s.name}"', f"    data_type: {TRITON_TYPES[s.dtype]}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    else:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(contract: Contract, name: str, max_batch_size: int = DEFAULT_MAX_BATCH) -> str:
    """The text-format ModelConfig for the onnxruntime backend."""
    ins = ",\n".join(_tensor_block(s) for s in contract.inputs)
    outs = ",\n".join(_tensor_block(s) for s in contract.outputs)
    return (
        f'# Written by ddpm-export from the artifact contract ({contract.arch}, '
        f'{contract.prediction_type}).\n'
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {int(max_batch_size)}\n"
        f"input [\n{ins}\n]\n"
        f"output [\n{outs}\n]\n"
        "dynamic_batching {\n  max_queue_delay_microseconds: 100\n}\n"
    )


def write_triton_repo(
    model_onnx: str | os.PathLike,
    contract: Contract,
    repo: str | os.PathLike,
    *,
    name: str = "ddpm",
    max_batch_size: int = DEFAULT_MAX_BATCH,
) -> Path:
    """Write ``repo/name/{config.pbtxt, 1/model.onnx}`` and ``repo/ddpm_sampler``; returns the
    UNet model folder."""
    def write(tmp: Path) -> None:
        shutil.copyfile(model_onnx, tmp / "1" / "model.onnx")
        (tmp / "config.pbtxt").write_text(config_pbtxt(contract, name, max_batch_size))

    final = write_model_dir(repo, name, write, what="the Triton model repository",
                            fix="choose a writable --triton-repo")
    write_sampler_model(contract, final.parent, model_onnx=model_onnx)
    return final
