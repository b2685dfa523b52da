"""The ``ddpm_sampler`` model of a Triton model repository (Python backend).

Layout::

    REPO/ddpm_sampler/config.pbtxt   inputs/outputs of ddpm.serve.requests, dynamic batching
    REPO/ddpm_sampler/1/model.py     a two-line shim importing ddpm.serve.triton_model
    REPO/ddpm_sampler/1/model.onnx   the exported graph (its contract included), unless
                                     ``model_path`` points the model at a file elsewhere

The model logic stays in the installed ``ddpm`` package rather than being pasted into
``model.py``, so the served code is the tested code and upgrades with ``pip``. Triton's batch
axis carries request *rows* (see :mod:`ddpm.serve.requests`); the Python backend hands
``execute`` the whole dynamic batch as a list of requests, which the model runs concurrently on
its thread pool (see :mod:`ddpm.serve.triton_model` for why rows are not fused into one call).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ddpm._io import _umask, check_writable_dir
from ddpm.artifact import Contract
from ddpm.errors import OutputError
from ddpm.serve.requests import DEFAULT_MAX_IMAGES, INPUTS, OUTPUT

SAMPLER_MODEL = "ddpm_sampler"
#: Rows Triton may gather into one ``execute`` call (the dynamic batch).
DEFAULT_MAX_ROWS = 32
#: How long Triton holds a request to gather a bigger batch; small next to a sampling run.
QUEUE_DELAY_US = 2000

MODEL_PY = '''\
"""Triton Python-backend entry point of ddpm_sampler; the model is ddpm.serve.triton_model."""

from ddpm.serve.triton_model import TritonPythonModel  # noqa: F401
'''


def _param(key: str, value: object) -> str:
    return f'  {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def sampler_config_pbtxt(
    contract: Contract,
    *,
    name: str = SAMPLER_MODEL,
    max_rows: int = DEFAULT_MAX_ROWS,
    instances: int = 1,
    kind: str = "KIND_CPU",
    model_path: str = "model.onnx",
    workers: int | None = None,
    num_threads: int = 1,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> str:
    """Text-format ModelConfig of the sampler model.

    ``kind`` KIND_CPU / KIND_GPU picks the ORT device of each instance; ``workers`` is each
    instance's thread pool (default ``max_rows``: a whole dynamic batch at once);
    ``num_threads`` the ORT intra-op threads per request (1: many requests in parallel beat
    one wide request on a CPU).
    """
    c, h, w = contract.image_shape
    ins = []
    for f in INPUTS:
        opt = "\n    optional: true" if f.optional else ""
        ins.append(f'  {{\n    name: "{f.name}"\n    data_type: {f.triton}\n    dims: [ 1 ]{opt}\n  }}')
    params = [_param("model_path", model_path), _param("num_threads", num_threads),
              _param("max_images", max_images)]
    if workers is not None:
        params.append(_param("workers", workers))
    return (
        f"# Written by ddpm from the artifact contract ({contract.arch}, "
        f"{contract.num_classes} classes, {h}x{w}x{c}).\n"
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {int(max_rows)}\n"
        "input [\n" + ",\n".join(ins) + "\n]\n"
        "output [\n"
        f'  {{\n    name: "{OUTPUT}"\n    data_type: TYPE_UINT8\n    dims: [ -1, {h}, {w}, {c} ]\n  }}\n'
        "]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}\n"
        f"instance_group [\n  {{ kind: {kind} count: {int(instances)} }}\n]\n"
        "parameters [\n" + ",\n".join(params) + "\n]\n"
    )


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an old one (same filesystem)."""
    if final.exists():
        # os.replace cannot replace a non-empty folder: swap the old one out first.
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old."))
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_sampler_model(
    contract: Contract,
    repo: str | os.PathLike,
    *,
    model_onnx: str | os.PathLike | None = None,
    name: str = SAMPLER_MODEL,
    **config: object,
) -> Path:
    """Write ``repo/name/{config.pbtxt, 1/model.py[, 1/model.onnx]}`` atomically.

    With ``model_onnx`` the graph is copied into the version folder (a self-contained model);
    without it, pass ``model_path=`` (absolute) in ``config`` to serve a file in place.
    """
    def write(tmp: Path) -> None:
        if model_onnx is not None:
            shutil.copyfile(model_onnx, tmp / "1" / "model.onnx")
        (tmp / "1" / "model.py").write_text(MODEL_PY)
        (tmp / "config.pbtxt").write_text(sampler_config_pbtxt(contract, name=name, **config))

    return write_model_dir(repo, name, write, what="the Triton model",
                           fix="choose a writable model repository folder")


def write_model_dir(
    repo: str | os.PathLike, name: str, write: Callable[[Path], None], *, what: str, fix: str
) -> Path:
    """Build ``repo/name`` (with its version folder ``1/``) in a temp folder beside it via
    ``write(tmp)``, then swap it in whole; an OSError leaves no temp folder and the old model
    untouched, and ends as one OutputError naming ``what`` and ``fix``."""
    root = check_writable_dir(repo, what="the Triton model repository")
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a server may run as another user
        (tmp / "1").mkdir()
        write(tmp)
        replace_dir(tmp, final)
    except OSError as e:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise OutputError(f"cannot write {what} {str(final)!r}: {e.strerror or e}; {fix}") from None
    return final
