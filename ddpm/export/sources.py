"""What ``ddpm-export`` can read: a ``ckpt.pt``, a ``.safetensors`` file, or a diffusers folder.

Each source becomes a :class:`LoadedModel`: a module in eval mode on CPU, called as
``model(x, t, y=None)``, plus everything the artifact contract needs. Loading never unpickles
anything but plain tensors and containers (``weights_only=True``), and rejects weights that
hold NaN/Inf, since an exported graph of such weights would only ever produce garbage.

``.safetensors`` header metadata (all values are strings, as the format requires)::

    arch          preset name, e.g. "ddpm"
    model_config  JSON object: the preset's config
    schedule      JSON object: ScheduleConfig.to_dict()        (optional)
    data          JSON object: the checkpoint's "data" entry   (optional)

A diffusers folder holds ``config.json`` plus ``diffusion_pytorch_model.safetensors`` (or
``.bin``) of a ``UNet2DModel``; it is exported as the ``unet2d`` preset, which wraps the same
weights (``ddpm.models.unet2d.from_diffusers``). Its schedule comes from
``scheduler_config.json`` beside it or in ``../scheduler/``, else diffusers' DDPMScheduler
defaults, and the notes say which; every key is honoured or refused
(:mod:`ddpm.export.diffusers_config`). A pipeline root (``model_index.json`` with ``unet/``
and ``scheduler/``, as ``DDPMPipeline.save_pretrained`` writes) is accepted for
DDPMPipeline/DDIMPipeline and refused, in one line, for other pipeline kinds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm import limits
from ddpm.errors import CheckpointError, ConfigError, first_line
from ddpm.export.diffusers_config import (
    IMPORT_DEFAULTS,
    check_pipeline,
    read_json,
    schedule_from_scheduler_config,
)
from ddpm.schedule import ScheduleConfig

#: Parsed safetensors metadata fields -> allowed types (``arch`` is the raw string).
SAFETENSORS_TYPES: dict[str, tuple[type, ...]] = {
    "model_config": (dict,), "schedule": (dict, type(None)), "data": (dict, type(None)),
}
SAFETENSORS_FIX = (
    "save it with arch as a string and model_config, schedule and data as JSON objects, "
    "or export the ckpt.pt instead"
)


@dataclass
class LoadedModel:
    """A model ready to export, with the facts the contract records."""

    module: Any  # torch.nn.Module, forward(x, t, y=None) -> tensor
    arch: str
    model_config: dict[str, Any]
    schedule: ScheduleConfig
    image_shape: tuple[int, int, int]  # (C, H, W) of the model input
    out_channels: int
    num_classes: int
    value_range: tuple[float, float] = (-1.0, 1.0)
    source: str = ""
    notes: list[str] = field(default_factory=list)


def load_source(path: str | os.PathLike, *, weights: str = "ema") -> LoadedModel:
    """Dispatch on what ``path`` is; raise CheckpointError with the fix for anything else."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {str(p)!r} not found; pass the ckpt.pt written by ddpm-train, a "
            ".safetensors file or a diffusers UNet2DModel folder"
        )
    if p.is_dir():
        if (p / "model_index.json").is_file():
            loaded = _load_diffusers(check_pipeline(p))
        elif (p / "config.json").is_file():
            if (p.parent / "model_index.json").is_file():
                check_pipeline(p.parent)  # a unet/ subfolder: refuse latent pipelines too
            loaded = _load_diffusers(p)
        elif (p / "ckpt.pt").is_file():
            loaded = _load_ckpt(p / "ckpt.pt", weights)
        else:
            raise CheckpointError(
                f"{str(p)!r} is a folder without ckpt.pt, config.json or model_index.json; pass "
                "the ckpt.pt written by ddpm-train, a diffusers DDPMPipeline/DDIMPipeline folder "
                "or a UNet2DModel folder"
            )
    elif p.suffix == ".safetensors":
        loaded = _load_safetensors(p)
    else:
        loaded = _load_ckpt(p, weights)
    check_finite(loaded)
    return loaded


def _image_facts(config: dict, data: dict | None) -> tuple[tuple[int, int, int], int, int]:
    data = data or {}
    try:
        c = int(config.get("in_channels", data.get("channels")))
        size = int(config.get("image_size", data.get("image_size")))
        out = int(config.get("out_channels", c))
        k = int(config.get("num_classes", data.get("num_classes", 0)) or 0)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"model config {config} lacks in_channels / image_size; the checkpoint is "
            "incomplete, re-run ddpm-train"
        ) from None
    return (c, size, size), out, k


def _value_range(data: dict | None) -> tuple[float, float]:
    vr = (data or {}).get("value_range") or (-1.0, 1.0)
    return float(vr[0]), float(vr[1])


def _load_ckpt(p: Path, weights: str) -> LoadedModel:
    from ddpm.models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(p)
    model, schedule = _build(lambda: model_from_checkpoint(ckpt, weights=weights), p)
    config = dict(ckpt["model_config"])
    data = ckpt.get("data") or {}
    shape, out, k = _image_facts(config, data)
    return LoadedModel(
        module=model, arch=str(ckpt["arch"]), model_config=config, schedule=schedule,
        image_shape=shape, out_channels=out, num_classes=k, value_range=_value_range(data),
        source=str(p), notes=[f"weights: {weights}"],
    )


def _build(fn, p: Path):
    """Run a model constructor, turning config problems into an error naming the file."""
    try:
        return fn()
    except ConfigError as e:
        raise CheckpointError(f"{str(p)!r}: cannot rebuild its model ({e})") from None


def _json_field(meta: dict[str, str], key: str, p: Path, required: bool) -> Any:
    if key not in meta:
        if required:
            raise CheckpointError(
                f"{str(p)!r} has no {key!r} in its safetensors metadata (found keys "
                f"{sorted(meta)}); save it with arch, model_config and schedule metadata "
                "or export the ckpt.pt instead"
            )
        return None
    try:
        return json.loads(meta[key]) if key != "arch" else meta[key]
    except ValueError as e:
        raise CheckpointError(
            f"{str(p)!r}: safetensors metadata {key!r} is not JSON ({first_line(e)}); store "
            "it as json.dumps(...) of an object"
        ) from None


def _load_safetensors(p: Path) -> LoadedModel:
    from safetensors import SafetensorError, safe_open

    from ddpm.models.registry import build

    keys = ("arch", "model_config", "schedule", "data")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            # The header is checked before a single tensor is read.
            fields = {key: _json_field(meta, key, p, key in keys[:2]) for key in keys}
            _check_metadata(fields, p)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{str(p)!r} is not a readable safetensors file ({first_line(e)}); pass a valid file"
        ) from None
    arch, config, sched, data = (fields[k] for k in keys)
    notes = []
    if sched is None:
        schedule = ScheduleConfig()
        notes.append("no schedule in the safetensors metadata: using the default ScheduleConfig")
    else:
        schedule = _build(lambda: ScheduleConfig.from_dict(sched), p)
    model = _build(lambda: build(arch, dict(config)), p)
    _load_state(model, state, p)
    shape, out, k = _image_facts(config, data)
    return LoadedModel(
        module=model.eval(), arch=arch, model_config=dict(config), schedule=schedule,
        image_shape=shape, out_channels=out, num_classes=k, value_range=_value_range(data),
        source=str(p), notes=notes,
    )


def _check_metadata(fields: dict[str, Any], p: Path) -> None:
    """Types of the parsed metadata (a list where an object belongs, a bare string, null)
    and the sizes later code allocates from, before any model is built."""
    from ddpm.models.checkpoint import DATA_TYPES

    where = f"{str(p)!r} safetensors metadata"
    limits.check_types(fields, SAFETENSORS_TYPES, where, CheckpointError, SAFETENSORS_FIX)
    if fields["data"] is not None:
        limits.check_types(fields["data"], DATA_TYPES, f"{where} data", CheckpointError,
                           SAFETENSORS_FIX)
    if fields["schedule"] is not None:
        limits.check_schedule(fields["schedule"], f"{where} schedule", CheckpointError,
                              SAFETENSORS_FIX)


def _load_state(model, state: dict, p: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{str(p)!r}: weights do not fit the stored model config ({first_line(e)}); the "
            "file is inconsistent, re-save it"
        ) from None


def _diffusers_schedule(folder: Path) -> tuple[ScheduleConfig, list[str]]:
    """The scheduler config beside the UNet or in the pipeline's scheduler/ folder; every
    key honoured or refused (:mod:`ddpm.export.diffusers_config`)."""
    for cand in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            schedule, notes = schedule_from_scheduler_config(read_json(cand), cand)
            return schedule, [f"schedule from {cand}", *notes]
    schedule = ScheduleConfig(**IMPORT_DEFAULTS)
    return schedule, ["no scheduler_config.json next to the model: using diffusers' default "
                      "DDPMScheduler settings"]


def _load_diffusers(folder: Path) -> LoadedModel:
    """A UNet2DModel folder becomes the ``unet2d`` preset (same weights, our signature)."""
    from ddpm.models.registry import config_to_dict

    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{str(folder / 'config.json')!r} is not valid JSON ({e})") from None
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(
            f"{str(folder)!r} holds a diffusers {config.get('_class_name')!r}; only UNet2DModel "
            "folders can be exported"
        )
    try:
        from ddpm.models.unet2d import load_diffusers_folder
    except ImportError as e:
        raise CheckpointError(
            f"{str(folder)!r} is a diffusers folder but diffusers is unavailable ({e}); "
            "pip install diffusers"
        ) from None
    schedule, notes = _diffusers_schedule(folder)  # refuse a bad scheduler before loading weights
    model = _build(lambda: load_diffusers_folder(str(folder)), folder)
    cfg = model.config
    if cfg.num_classes:
        notes.append(f"class embedding row {cfg.num_classes} is taken as the null label")
    return LoadedModel(
        module=model.eval(), arch="unet2d", model_config=config_to_dict(cfg), schedule=schedule,
        image_shape=(cfg.in_channels, cfg.image_size, cfg.image_size),
        out_channels=cfg.out_channels, num_classes=cfg.num_classes,
        source=str(folder), notes=notes,
    )


def check_finite(loaded: LoadedModel) -> None:
    """Refuse weights with NaN/Inf: name the first bad tensor and how many values are bad."""
    import torch

    for name, t in loaded.module.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{loaded.source!r}: weight {name!r} holds {bad} NaN/Inf value(s) of "
                f"{t.numel()}; training diverged -- export an earlier checkpoint or retrain "
                "with a lower learning rate"
            )
