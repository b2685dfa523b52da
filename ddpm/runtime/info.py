"""``ddpm-run --info MODEL``: a short, plain-text description of any ddpm artifact.

:func:`describe` accepts a model.onnx (and its variants), model.ts, model.pt2 /
model_aoti.pt2, a ``ckpt.pt``, or a folder holding one of them. Exported files are
described from their contract alone (``ddpm.artifact.read``: numpy and zipfile, no torch,
no onnx); only a ``ckpt.pt`` imports torch, to unpickle it (``weights_only``). Anything
else raises a one-line :class:`ArtifactError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpm import artifact, defaults
from ddpm.artifact import Contract
from ddpm.errors import ArtifactError, DDPMError

#: File name -> what it is; a folder's listing and the pick order for a folder argument.
KNOWN_FILES = {
    "model.onnx": "ONNX model graph",
    "model_optimized.onnx": "ONNX, --optimize fusions (CPU)",
    "model_fp16.onnx": "ONNX, fp16 weights (--fp16)",
    "model_int8.onnx": "ONNX, int8 convolutions (--int8)",
    "model_step.onnx": "ONNX whole sampler step (--with-step)",
    "model.ts": "TorchScript (torch.jit.trace)",
    "model.pt2": "torch.export program (--format pt2)",
    "model_aoti.pt2": "AOTInductor package (--aoti)",
    "model.xml": "OpenVINO IR",
    "ckpt.pt": "ddpm-train checkpoint",
}
_KINDS = {".onnx": "ONNX", ".ts": "TorchScript", ".pt2": "torch.export pt2", ".pt": "training checkpoint"}


def _pick(folder: Path) -> Path:
    for name in KNOWN_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ArtifactError(
        f"folder {str(folder)!r} holds no ddpm model (looked for {', '.join(KNOWN_FILES)}); "
        "pass a model file or the folder ddpm-export wrote"
    )


def read_contract(path: Path) -> Contract:
    """The contract of an exported file, or the one a ``ckpt.pt`` implies."""
    if path.suffix == ".pt":
        from ddpm.models.checkpoint import load_checkpoint
        from ddpm.runtime.engines.torch import contract_from_checkpoint

        try:
            return contract_from_checkpoint(load_checkpoint(path), str(path))
        except ArtifactError:
            raise
        except DDPMError as e:  # CheckpointError etc.: keep the message, make it an artifact error
            raise ArtifactError(str(e)) from None
    if path.suffix not in _KINDS:
        raise ArtifactError(
            f"{path}: not a ddpm artifact (suffix {path.suffix or 'none'!r}); pass a model.onnx, "
            "model.ts, model.pt2 or ckpt.pt written by ddpm-export / ddpm-train"
        )
    return artifact.read(path)


def describe(path: str | os.PathLike) -> str:
    """A few lines saying what the artifact at ``path`` is and how it samples by default."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{str(p)!r} not found; pass a model file or the folder holding it")
    p = _pick(p) if p.is_dir() else p
    c = read_contract(p)
    kind = _KINDS[p.suffix]
    lines = [f"{p}: {kind}, graph {c.graph!r}, precision {c.precision}"]
    lines.append(f"  preset: {c.arch} ({', '.join(f'{k}={v}' for k, v in sorted(c.model_config.items()))})")
    lines.append(f"  resolution: {c.image_height}x{c.image_width}, channels: {c.image_channels}, "
                 f"value range: [{c.value_range[0]:g}, {c.value_range[1]:g}]")
    if c.conditional:
        lines.append(f"  classes: {c.num_classes} (null label {c.null_label}: classifier-free guidance)")
    else:
        lines.append("  classes: none (unconditional)")
    lines.append(f"  schedule (betas sha256 {c.betas_sha256[:12]}...):")
    lines += [f"    {k}: {v}" for k, v in c.schedule.items()]
    lines.append(
        f"  sampler defaults: {defaults.SAMPLER}, {defaults.STEPS} steps, eta {defaults.ETA:g}, "
        f"n {defaults.N}, seed {defaults.SEED}, guidance {defaults.guidance_for(c.conditional):g}"
    )
    if c.step_graph:
        lines.append("  step graph: " + ", ".join(f"{k}={v}" for k, v in sorted(c.step_graph.items())
                                                  if k != "timesteps"))
    lines.append(f"  exporter: {_exporter(p, c)}")
    versions = {k: v for k, v in c.versions.items() if k not in ("exporter", "torchscript", "pt2")}
    if versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    beside = []
    for name, role in KNOWN_FILES.items():
        f = p.parent / name
        if f.is_file():
            mark = " (this file)" if f.name == p.name else ""
            beside.append(f"    {name:<22} {f.stat().st_size / 1e6:8.2f} MB  {role}{mark}")
    lines.append("  files beside it:" + ("" if beside else " none of the export's standard names"))
    return "\n".join(lines + beside)


def _exporter(p: Path, c: Contract) -> str:
    """What wrote this file: the ONNX exporter, torch.jit.trace, torch.export, or ddpm-train."""
    v = c.versions
    if p.suffix == ".onnx":
        return v.get("exporter", "unknown (exported before the exporter was recorded)")
    if p.suffix == ".ts":
        return v.get("torchscript", "torch.jit.trace")
    if p.suffix == ".pt2":
        from ddpm.runtime.engines.pt2 import archive_info

        aoti = "AOTInductor-compiled " if archive_info(p)[0] else ""
        return f"{aoti}{v.get('pt2', 'torch.export.export')}"
    return "ddpm-train (a checkpoint; export it with `ddpm-export CKPT`)"
