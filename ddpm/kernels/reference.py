"""Torch reference of one sampler step (DDPM, Ho et al. 2020 eq. 7/15; DDIM, Song et al.
2021 eq. 12; DPM-Solver++(2M), Lu et al. 2022; seeds/001's mix), read from a
:class:`ddpm.schedule.StepTable`.

The unfused baseline the Triton kernel is checked and benchmarked against. It evaluates
the table's linear form (see :mod:`ddpm.schedule`) in float32 with the coefficients cast
to float32 once -- the same numbers the kernel receives as scalar arguments -- and returns
results in ``x_t``'s dtype. No diffusion math is re-derived here.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.schedule import StepTable


def coefficients(table: StepTable, i: int) -> dict[str, float]:
    """Row ``i`` of the table rounded to float32 (as Python floats, for kernel arguments).

    Refuses a table whose step is more than the linear form (dynamic thresholding).
    """
    if table.requires_host_step():
        raise ConfigError(
            f"the {table.sampler} table uses dynamic thresholding (a per-sample quantile of x̂0), "
            "which the fused kernel and this reference do not compute; sample with "
            "ddpm.schedule.step on the host, or turn thresholding off"
        )
    return {k: float(np.float32(v)) for k, v in table.row(i).items()}


def step(
    table: StepTable,
    i: int,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor | None,
    prev_x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_prev, x0) for loop step ``i``; fp32 math, outputs in ``x_t``'s dtype.

    ``noise`` is z ~ N(0, I) of x_t's shape; it may be None only where ``sigma[i] == 0``.
    ``prev_x0`` is the x0 step ``i - 1`` returned; needed only where ``c_prev[i] != 0``.
    """
    r = coefficients(table, i)  # validates i
    if model_output.shape != x_t.shape:
        raise ConfigError(
            f"model output shape {tuple(model_output.shape)} does not match "
            f"x_t shape {tuple(x_t.shape)}"
        )
    if r["sigma"] != 0.0:
        if noise is None:
            raise ConfigError(f"step {i} has sigma={r['sigma']:.3g} > 0 but no noise was given")
        if noise.shape != x_t.shape:
            raise ConfigError(
                f"noise shape {tuple(noise.shape)} does not match x_t shape {tuple(x_t.shape)}"
            )
    if r["c_prev"] != 0.0 and (prev_x0 is None or prev_x0.shape != x_t.shape):
        got = None if prev_x0 is None else tuple(prev_x0.shape)
        raise ConfigError(
            f"step {i} of {table.sampler} needs the previous step's x̂0 of shape "
            f"{tuple(x_t.shape)} as prev_x0, got {got}"
        )
    clip = table.clip_sample_range if table.clip_sample else None
    return apply_row(r, clip, model_output, x_t, noise, prev_x0)


def apply_row(
    r: dict[str, float],
    clip: float | None,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor | None,
    prev_x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensor part of :func:`step` for one coefficient row (no checks; compilable).

    ``r`` is :func:`coefficients`' dict; ``clip`` the |x̂0| bound or None for no clipping.
    """
    xt = x_t.float()
    out = model_output.float()
    # 1. predicted x_0
    x0 = r["x0_xt"] * xt + r["x0_out"] * out
    # 2. optional clipping
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    # 3. posterior mean (DDPM) or direction to x_t (DDIM)
    prev = r["c_x0"] * x0 + r["c_xt"] * xt + r["c_out"] * out
    # 3b. multistep term (DPM-Solver++(2M)): the previous step's x̂0
    if r.get("c_prev", 0.0) != 0.0 and prev_x0 is not None:
        prev = prev + r["c_prev"] * prev_x0.float()
    # 4. + sigma * z
    if r["sigma"] != 0.0 and noise is not None:
        prev = prev + r["sigma"] * noise.float()
    return prev.to(x_t.dtype), x0.to(x_t.dtype)
