"""The artifact contract checked against the graph's own inputs and outputs, at load.

Metadata can lie (edited by hand, copied from another export): a contract saying 32x32
around a 16x16 graph, an int32 timestep, an fp16 input, an output name the graph lacks.
Without this check such a file loads and dies at the first model call with an
onnxruntime traceback (or, worse, runs and writes wrong images). Each engine turns its
graph's signature into :class:`Port` rows and calls :func:`check_signature`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpm.artifact import Contract, TensorSpec
from ddpm.errors import ArtifactError

FIX = "the file was edited after export or its metadata belongs to another model: re-export it with `ddpm-export CKPT`"

#: onnxruntime's type strings and OpenVINO's element type names -> contract dtypes.
DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bfloat16)": "bfloat16",
    "f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32",
    "bf16": "bfloat16",
}


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, dtype (contract spelling) and shape, where a
    dimension is an int, or None when the graph leaves it free (a symbolic batch)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None  # None: rank unknown


def _shown(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _check_port(path: Path, kind: str, port: Port, spec: TensorSpec) -> None:
    if port.name != spec.name:
        raise ArtifactError(
            f"{path}: graph {kind} {port.name!r} is named {spec.name!r} in the contract; {FIX}",
            field="path",
        )
    if port.dtype != spec.dtype:
        raise ArtifactError(
            f"{path}: graph {kind} {port.name!r} is {port.dtype}, the contract says {spec.dtype} "
            f"(the runtime feeds {spec.dtype}); {FIX}", field="path",
        )
    if port.shape is None:
        return
    want = tuple(d if isinstance(d, int) else None for d in spec.shape)
    same = len(port.shape) == len(want) and all(
        g is None or w is None or g == w for g, w in zip(port.shape, want, strict=True))
    if not same:
        raise ArtifactError(
            f"{path}: graph {kind} {port.name!r} has shape {_shown(port.shape)}, the contract says "
            f"{_shown(want)}; {FIX}", field="path",
        )


def check_signature(path: Path, contract: Contract, inputs: list[Port], outputs: list[Port]) -> None:
    """Raise a one-line ArtifactError where the graph's ports contradict ``contract``: names,
    order, dtypes, fixed dimensions, and the sample input against the contract's image shape."""
    for kind, ports, specs in (("input", inputs, contract.inputs), ("output", outputs, contract.outputs)):
        if len(ports) != len(specs):
            raise ArtifactError(
                f"{path}: graph {kind}s {tuple(p.name for p in ports)} differ from its contract's "
                f"{tuple(s.name for s in specs)}; {FIX}", field="path",
            )
        for port, spec in zip(ports, specs, strict=True):
            _check_port(path, kind, port, spec)
    sample = inputs[0].shape
    if contract.graph == "model" and sample is not None and len(sample) == 4:
        if any(g is not None and g != w for g, w in zip(sample[1:], contract.image_shape, strict=True)):
            raise ArtifactError(
                f"{path}: graph input {inputs[0].name!r} has shape {_shown(sample)}, but the "
                f"contract's image is {contract.image_shape} (C, H, W); {FIX}", field="path",
            )


def ort_ports(args: list) -> list[Port]:
    """Ports of onnxruntime ``NodeArg`` s (``session.get_inputs()``)."""
    return [Port(a.name, DTYPES.get(a.type, a.type),
                 None if a.shape is None else tuple(d if isinstance(d, int) else None for d in a.shape))
            for a in args]


def openvino_ports(nodes: list) -> list[Port]:
    """Ports of OpenVINO ``Output`` s (``model.inputs`` / ``model.outputs``)."""
    ports = []
    for n in nodes:
        ps = n.get_partial_shape()
        shape = None if ps.rank.is_dynamic else tuple(
            d.get_length() if d.is_static else None for d in ps)
        et = n.get_element_type().get_type_name()
        ports.append(Port(n.get_any_name(), DTYPES.get(et, et), shape))
    return ports
