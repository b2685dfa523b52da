"""Everything a run needs, validated before the first step.

Bad input (unknown dataset or arch, an image size the UNet cannot downsample, an unwritable
``--out``, a broken ``--resume`` file, missing data) must fail here with one DDPMError, so a
run that starts training is one that can finish writing its outputs, and nothing is left
half-written. Torch and OS errors are converted at this boundary.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpm._io import check_writable_dir
from ddpm.errors import CheckpointError, ConfigError, DDPMError, OutputError
from ddpm.limits import check_elements
from ddpm.schedule import ScheduleConfig, q_sample_coefficients
from ddpm.training import ddp
from ddpm.training.config import TrainConfig, resume_config
from ddpm.training.datasets import ImageDataset, load_dataset
from ddpm.training.ema import EMA
from ddpm.training.state import restore_rng, seed_everything


@dataclass
class Prepared:
    config: TrainConfig
    dist: ddp.DistInfo
    data: ImageDataset
    num_classes: int  # 0 for an unconditional run
    model: nn.Module
    model_config: Any
    ema: EMA
    optimizer: torch.optim.Optimizer
    schedule: ScheduleConfig
    q_coefficients: tuple[np.ndarray, np.ndarray]
    start_step: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)


def prepare(
    config: TrainConfig, *, resume: str | os.PathLike | None = None, explicit: Collection[str] = ()
) -> Prepared:
    ckpt = init = None
    if resume is not None and "init_from" in explicit:
        raise ConfigError(
            "--init-from starts a new run and --resume continues one; pass only one of them"
        )
    if resume is not None:
        ckpt = _load_resume(resume)
        config = resume_config(ckpt["train_args"], config, explicit)
        if "out" not in explicit:  # continue in the folder the checkpoint lives in
            config = dataclasses.replace(config, out=str(Path(resume).parent))
        if config.steps <= ckpt["step"]:
            raise ConfigError(
                f"{str(resume)!r} is already at step {ckpt['step']}; pass --steps larger than that"
            )
    elif config.init_from is not None:
        init = _load_checkpoint(config.init_from, what="--init-from")
        config = init_config(init, config, explicit)
    config.validate()
    schedule = config.schedule()
    # Before loading data: an unwritable --out must not cost a data load and a model build.
    check_writable_dir(config.out, what="training outputs (--out)")
    for name in ("ckpt.pt", "loss.png"):  # else the run would train, then fail to save
        if (Path(config.out) / name).is_dir():
            raise OutputError(
                f"{str(Path(config.out) / name)!r} is a folder, where training writes its "
                f"{name}; remove it or choose another --out"
            )
    from ddpm.models.registry import archs

    if config.arch not in archs():  # fail before loading any data
        raise ConfigError(f"unknown arch {config.arch!r}; expected one of {', '.join(archs())}")
    dist = ddp.setup(config.device)
    if config.batch_size % dist.world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
            f"{dist.world_size} torchrun processes; pass a multiple of {dist.world_size}"
        )

    data = load_dataset(config.dataset, image_size=config.image_size,
                        data_root=config.data_root, download=config.download)
    num_classes = data.num_classes if config.conditional else 0
    if config.conditional and num_classes == 0:
        raise ConfigError(
            f"--conditional needs class labels but dataset {config.dataset!r} has none; put the "
            "images in one sub-folder per class or drop --conditional"
        )

    s = config.image_size
    check_elements("a training batch", (config.batch_size, data.channels, s, s))
    check_elements("the --num-samples grid", (config.num_samples, data.channels, s, s))
    seed_everything(config.seed)  # before building: same seed -> same init on every rank
    model, model_config = _build_model(config, data.channels, num_classes, ckpt or init)
    if init is not None:
        _load_init_weights(model, model_config, init, config, data.channels, num_classes)
    _check_forward(model, config, data.channels, num_classes)
    model.to(dist.device)
    data.images, data.labels = data.images.to(dist.device), data.labels.to(dist.device)
    ema = EMA(model, decay=config.ema_decay)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    run = Prepared(config, dist, data, num_classes, model, model_config, ema, optimizer,
                   schedule, q_sample_coefficients(schedule))
    if ckpt is not None:
        _restore(run, ckpt, resume)
    return run


def _load_checkpoint(path: str | os.PathLike, *, what: str) -> dict:
    from ddpm.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if what == "--init-from" and not ckpt.get("ema"):
        raise CheckpointError(
            f"{what} {str(path)!r} holds no EMA weights; pass a ckpt.pt written by ddpm-train"
        )
    return ckpt


def init_config(init: dict, given: TrainConfig, explicit: Collection[str]) -> TrainConfig:
    """The config of a ``--init-from`` run: what fixes the network's shape (arch, model
    config, image size, conditioning) and what it was trained to predict come from the
    checkpoint; the optimizer, data order, seed and length come from the command line.
    Setting a shape-defining option to another value is an error, not a silent change."""
    sched = dict(init["schedule"])
    info = dict(init["data"])
    fixed = {
        "arch": init["arch"],
        "image_size": int(info["image_size"]),
        "conditional": int(info.get("num_classes", 0)) > 0,
        "prediction_type": sched.get("prediction_type", given.prediction_type),
        "objective": sched.get("objective", given.objective),
    }
    for name, value in fixed.items():
        if name in explicit and getattr(given, name) != value:
            flag = "--" + name.replace("_", "-")
            if name == "conditional":
                flag = "--conditional" if given.conditional else "--unconditional"
            raise ConfigError(
                f"{flag} differs from the --init-from checkpoint's {name} {value!r}; drop it "
                "(a fine-tuning run keeps the network it starts from)"
            )
    if "model_config" in explicit and given.model_config:
        raise ConfigError(
            "--model-config cannot change the network of an --init-from run; drop it (the "
            "checkpoint's model config is used)"
        )
    keep = {k: sched[k] for k in ("beta_schedule", "num_train_timesteps")
            if k in sched and k not in explicit}
    return dataclasses.replace(given, **fixed, **keep)


def _load_init_weights(model: nn.Module, model_config: Any, init: dict, config: TrainConfig,
                       channels: int, num_classes: int) -> None:
    from ddpm.models.checkpoint import check_finite

    path = str(config.init_from)
    info = dict(init["data"])
    want = (int(info.get("channels", channels)), int(info.get("num_classes", 0)))
    if want != (channels, num_classes):
        raise ConfigError(
            f"--init-from {path!r} was trained on {want[0]}-channel images with {want[1]} "
            f"classes, but --dataset {config.dataset!r} has {channels} channels and "
            f"{num_classes} classes; fine-tune on data of the same shape"
        )
    check_finite(init["ema"], f"{path!r} 'ema' weights")
    try:
        model.load_state_dict(init["ema"], strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"cannot start from {path!r}: its EMA weights do not fit the model its config "
            f"builds ({str(e).splitlines()[0]}); pass an unmodified ckpt.pt from ddpm-train"
        ) from None


def _load_resume(path: str | os.PathLike) -> dict:
    ckpt = _load_checkpoint(path, what="--resume")
    missing = [k for k in ("train_args", "optimizer", "rng", "losses") if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{str(path)!r} lacks {missing}, so training cannot resume from it; start a fresh "
            "run without --resume"
        )
    return ckpt


def _build_model(config: TrainConfig, channels: int, num_classes: int, ckpt: dict | None):
    from ddpm.models.registry import build, config_from_dict

    try:
        if ckpt is not None:
            model_config = config_from_dict(config.arch, dict(ckpt["model_config"]))
        else:
            base = {"in_channels": channels, "out_channels": channels,
                    "image_size": config.image_size, "num_classes": num_classes}
            model_config = config_from_dict(config.arch, {**base, **config.model_config})
        model = build(config.arch, model_config)
    except DDPMError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"cannot build arch {config.arch!r} with --model-config {config.model_config}: {e}; "
            "check the field names and values"
        ) from None
    return model, model_config


def _check_forward(model: nn.Module, config: TrainConfig, channels: int, num_classes: int) -> None:
    """One tiny eval-mode forward pass (no RNG used): catches sizes the UNet cannot handle."""
    s = config.image_size
    x = torch.zeros(2, channels, s, s)
    t = torch.zeros(2, dtype=torch.long)
    y = torch.zeros(2, dtype=torch.long) if num_classes else None
    model.eval()
    try:
        with torch.no_grad():
            out = model(x, t, y)
    except DDPMError:
        raise
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"arch {config.arch!r} cannot process {s}x{s} images ({str(e).splitlines()[0]}); "
            "pass an --image-size the UNet can halve at every level, e.g. 16 or 32"
        ) from None
    finally:
        model.train()
    if tuple(out.shape) != tuple(x.shape):
        raise ConfigError(
            f"arch {config.arch!r} maps {tuple(x.shape)} images to {tuple(out.shape)}; pass an "
            "--image-size the UNet can halve at every level, e.g. 16 or 32"
        )


def _restore(run: Prepared, ckpt: dict, path: str | os.PathLike) -> None:
    from ddpm.models.checkpoint import check_finite

    step = int(ckpt["step"])
    for weights in ("model", "ema"):  # resuming a diverged run would only diverge again
        check_finite(ckpt[weights] or {}, f"{str(path)!r} {weights!r} weights")
    try:
        run.model.load_state_dict(ckpt["model"], strict=True)
        run.ema.load_state_dict(ckpt["ema"], num_updates=step)  # one EMA update per step
        run.optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng(ckpt["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: its state does not fit the rebuilt model "
            f"({str(e).splitlines()[0]}); start a fresh run without --resume"
        ) from None
    run.start_step = step
    run.losses = [float(v) for v in ckpt["losses"]]
