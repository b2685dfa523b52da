"""Sample grids during training: DDIM (Song et al. 2021, eq. 12, η = 0) from the EMA model,
or seeds/001's "mix" sampler for a model trained with ``--objective corrupt``.

Uses the same pieces as every other backend -- the coefficient table from
``ddpm.schedule.step_table``, the torch reference update ``ddpm.kernels.reference.step`` and
counter-based noise from ``ddpm.noise`` -- so a training preview with a given seed shows what
the exported model will sample with that seed.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from ddpm.schedule import ScheduleConfig, step_table


@torch.no_grad()
def sample_images(
    model: nn.Module,
    schedule: ScheduleConfig,
    *,
    num_images: int,
    channels: int,
    image_size: int,
    num_classes: int = 0,
    seed: int = 0,
    num_steps: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Run a DDIM (or, for a corrupt-objective model, mix) sampler; returns float32
    (N, C, H, W), nominally in [-1, 1].

    Conditional models (``num_classes`` > 0) get labels 0, 1, ..., num_classes-1 repeated.
    """
    from ddpm import noise
    from ddpm.kernels.reference import step

    sampler = "mix" if schedule.objective == "corrupt" else "ddim"
    table = step_table(schedule, min(num_steps, schedule.num_train_timesteps), sampler=sampler)
    shape = (num_images, channels, image_size, image_size)
    x = torch.from_numpy(noise.initial_noise(table.init_noise, shape, seed=seed)).to(device)
    y = None
    if num_classes > 0:
        y = (torch.arange(num_images) % num_classes).to(device)
    was_training = model.training
    model.eval()
    try:
        for i in range(len(table)):
            t = torch.full((num_images,), int(table.timesteps[i]), dtype=torch.long, device=device)
            out = model(x, t, y).float()
            z = None
            if table.sigma[i] != 0.0:
                z = torch.from_numpy(noise.randn(shape, seed=seed, step=i)).to(device)
            x, _ = step(table, i, out, x, z)
    finally:
        model.train(was_training)
    return x.float().cpu().numpy()


def save_sample_grid(path: str | os.PathLike, images: np.ndarray, num_classes: int = 0) -> None:
    """Write images as a PNG grid atomically; one row per class cycle for conditional runs."""
    from ddpm.images import save_grid, to_uint8

    nrow = num_classes if 0 < num_classes <= 16 else None
    save_grid(path, to_uint8(images), nrow=nrow)
