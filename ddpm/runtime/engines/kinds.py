"""What a model file is, read from its first bytes, and which backend runs it.

A user who passes ``ckpt.pt`` to the ONNX Runtime engine, or ``model.onnx`` to the
TorchScript one, should hear what the file is and which backend (or which export command)
fits, not a parser error from deep inside onnxruntime or torch. :func:`check_kind` runs
before any engine opens the file. stdlib only: nothing here imports torch or onnx.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ddpm.errors import ArtifactError

#: file kind -> the backends that read it.
BACKENDS_FOR = {
    "onnx": ("ort", "openvino", "auto"),
    "torchscript": ("torchscript",),
    "checkpoint": ("torch",),
    "pt2": ("pt2",),
    "safetensors": (),
}
#: file kind -> what it is, for messages.
DESCRIBED = {
    "onnx": "an ONNX graph (model.onnx)",
    "torchscript": "a TorchScript archive (model.ts)",
    "checkpoint": "a training checkpoint (ckpt.pt)",
    "pt2": "a torch.export program (model.pt2)",
    "safetensors": "a safetensors weights file",
}


def _zip_kind(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            # Entries sit under one top folder whose name torch chooses: drop it.
            names = {n.partition("/")[2] for n in zf.namelist()}
    except (zipfile.BadZipFile, OSError):
        return None
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return "torchscript"
    if path.suffix in (".ts", ".jit"):  # a torch zip by the name ddpm-export gives model.ts
        return "torchscript"
    if any(n.startswith(("data/weights/", "models/", "data/aotinductor/")) for n in names):
        return "pt2"
    if "data.pkl" in names:
        return "checkpoint"
    return None


def sniff(path: str | Path) -> str | None:
    """``"onnx"``, ``"torchscript"``, ``"checkpoint"``, ``"pt2"``, ``"safetensors"`` or None
    (unknown: the engine's own reader then reports what is wrong)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"PK\x03\x04":
        return _zip_kind(p)
    if head[:1] == b"\x80" and p.suffix in (".pt", ".pth", ".ckpt"):
        return "checkpoint"  # torch.save's legacy (non-zip) pickle format
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head[:1] == b"\x08":  # ModelProto field 1 (ir_version, a varint) comes first
        return "onnx"
    return None


def _fix(kind: str, path: Path) -> str:
    """What to do with a file of ``kind``."""
    if kind == "checkpoint":
        return (f"sample it with backend 'torch' (`ddpm-run --backend torch`), or export it with "
                f"`ddpm-export {path}` and pass the model.onnx it writes")
    if kind == "safetensors":
        return f"export it with `ddpm-export {path}` and pass the model.onnx it writes"
    runs = BACKENDS_FOR[kind]
    also = f" (or {', '.join(runs[1:])})" if len(runs) > 1 else ""
    return f"use backend {runs[0]!r} (`--backend {runs[0]}`){also}"


def check_kind(path: str | Path, backend: str, wants: str) -> None:
    """Raise a one-line ArtifactError (``field="backend"``) when ``path`` is a kind of file
    ``backend`` does not read; ``wants`` names the file the backend expects."""
    p = Path(path)
    kind = sniff(p)
    if kind is None or backend in BACKENDS_FOR[kind]:
        return
    raise ArtifactError(
        f"{p} is {DESCRIBED[kind]}, but backend {backend!r} reads {wants}; {_fix(kind, p)}",
        field="backend",
    )
