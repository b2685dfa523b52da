"""Benchmark models: diffusers UNet2DModels built from a config, exported with our exporter.

- ``article``: the seed article's UNet2DModel (sample_size 28, block_out_channels (32, 64,
  64), DownBlock2D + 2x AttnDownBlock2D, 1.71 M parameters);
- ``cifar``: the google/ddpm-cifar10-32 layout (32x32x3, channels (128, 256, 256, 256),
  attention at 16x16, 35.7 M parameters), built from its config: no download;
- ``tiny``: a few-thousand-parameter model for the smoke test;
- ``bundled``: the trained digits model's ckpt.pt (``runs/bundled`` in a source checkout).

Random models get seeded weights, every one perturbed (zero-initialised output convs would
otherwise make the network constant). ``load_model(name, work)`` wraps the UNet with
:func:`ddpm.models.unet2d.from_diffusers`, writes a ddpm-train style ``ckpt.pt`` and exports
it with :func:`ddpm.export.export_checkpoint` (model.onnx, validated), so every contender --
DDPMPipeline, our torch loop, torch.compile, ORT -- runs the identical weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTICLE_CONFIG: dict[str, Any] = {
    "sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 2,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}


def article_unet(seed: int = 0, config: dict[str, Any] | None = None):
    """A UNet2DModel (default: the article's) with seeded random weights, all perturbed."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**(config or ARTICLE_CONFIG))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet.eval()


def write_ckpt(model, path: Path, *, num_classes: int = 0) -> Path:
    """A ddpm-train style ckpt.pt for a wrapped model (random 'data' entry)."""
    import dataclasses

    import torch

    from ddpm.models.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
    from ddpm.schedule import ScheduleConfig

    cfg = dataclasses.asdict(model.config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    size = int(cfg["image_size"])
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "arch": "unet2d",
        "model_config": cfg, "schedule": ScheduleConfig().to_dict(),
        "data": {"dataset": "random", "image_size": size, "channels": int(cfg["in_channels"]),
                 "num_classes": num_classes, "class_names": None, "value_range": [-1.0, 1.0]},
        "ema": state, "model": state, "optimizer": {}, "step": 0, "rng": {},
        "train_args": {}, "losses": [], "versions": {"torch": str(torch.__version__)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, ckpt)


CIFAR_CONFIG: dict[str, Any] = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}
TINY_CONFIG: dict[str, Any] = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": (8, 16), "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 4, "attention_head_dim": 4,
}
REPO = Path(__file__).resolve().parents[2]  # the source checkout, when run from one
BUNDLED_CKPT = REPO / "runs" / "bundled" / "ckpt.pt"


def _export(ckpt: Path, out: Path, int8: bool) -> dict[str, Path | None]:
    """model.onnx + model_optimized.onnx (+ model_int8.onnx) from ``ckpt``, exported afresh
    every run so the figures always describe the current exporter (seconds, not minutes)."""
    from ddpm.export import export_checkpoint

    paths = {"onnx": out / "model.onnx", "optimized": out / "model_optimized.onnx",
             "int8": out / "model_int8.onnx" if int8 else None}
    kw = {"int8": True} if int8 else {}
    export_checkpoint(ckpt, out, formats=("onnx",), optimize=True, **kw)
    return paths


def load_model(name: str, work: Path, *, int8: bool = False,
               bundled: str | Path | None = None) -> tuple[dict[str, Any] | None, str]:
    """Everything the harness needs for model ``name`` (article | cifar | bundled | tiny), or a note."""

    from ddpm.models.checkpoint import load_checkpoint, model_from_checkpoint
    from ddpm.models.unet2d import from_diffusers
    from ddpm.schedule import ScheduleConfig

    out = work / name
    unet = None
    if name in ("article", "cifar", "tiny"):
        unet = _tiny_unet() if name == "tiny" else article_unet(0, CIFAR_CONFIG if name == "cifar" else None)
        ckpt = out / "ckpt.pt"
        if not ckpt.is_file():
            write_ckpt(from_diffusers(unet), ckpt)
    elif name == "bundled":
        ckpt = Path(bundled or BUNDLED_CKPT)
        if not ckpt.is_file():
            return None, f"bundled model skipped: {ckpt} not found (pass --bundled-ckpt)"
    else:
        return None, f"unknown model {name!r} skipped (article, cifar, bundled or tiny)"
    try:
        paths = _export(ckpt, out, int8)
    except TypeError:  # an exporter without int8 support
        paths = {**_export(ckpt, out, False), "int8": None}
    c = load_checkpoint(ckpt)
    module, _ = model_from_checkpoint(c, weights="ema")
    module.eval()
    k = int(c["data"].get("num_classes") or 0)
    cfg = c["model_config"]
    size = int(c["data"]["image_size"])
    facts = {"arch": c["arch"], "params": sum(p.numel() for p in module.parameters()),
             "config": cfg, "image_shape": [int(c["data"]["channels"]), size, size],
             "num_classes": k, "guidance": 1.0,
             "weights": "random (seed 0, perturbed)" if unet is not None else "trained (EMA)"}
    return {
        "name": name, "unet": unet, "ckpt": ckpt, "module": module, **paths,
        "schedule": ScheduleConfig.from_dict(dict(c["schedule"])).to_dict(),
        "image_shape": tuple(facts["image_shape"]), "num_classes": k,
        "guidance": 1.0, "cfg_factor": 1, "facts": facts,
    }, ""


def _tiny_unet():
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(**TINY_CONFIG).eval()
