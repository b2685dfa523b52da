"""The denoising strip: x_t and the predicted x_0 every few steps, as one PNG grid.

For each of the first few samples the strip has two rows, left to right from x_T to the
final image: the noisy x_t the model saw at a step, and below it the x̂0 it predicted there
(the picture the seed articles draw of the reverse process).
"""

from __future__ import annotations

import os

import numpy as np

from ddpm.errors import ConfigError
from ddpm.images import make_grid, to_uint8, write_png


def strip_steps(num_steps: int, columns: int = 8) -> np.ndarray:
    """Evenly spaced loop indices 0..num_steps-1 (always including the first and last)."""
    k = max(1, min(columns, num_steps))
    return np.unique(np.linspace(0, num_steps - 1, k).round().astype(np.int64))


def trajectory_grid(
    xt: np.ndarray,
    x0: np.ndarray,
    final: np.ndarray,
    *,
    max_samples: int = 4,
    columns: int = 8,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """uint8 (H', W', C) grid from ``xt``/``x0`` (steps, N, C, H, W) and ``final`` (N, C, H, W)."""
    if xt is None or x0 is None:
        raise ConfigError("no trajectory recorded; call sample(..., trajectory=True)")
    idx = strip_steps(xt.shape[0], columns)
    rows = []
    for s in range(min(max_samples, xt.shape[1])):
        rows.append(np.concatenate([xt[idx, s], final[s : s + 1]]))  # x_t row, ends in x_0
        rows.append(np.concatenate([x0[idx, s], final[s : s + 1]]))  # x̂0 row
    tiles = to_uint8(np.concatenate(rows), value_range)  # (rows * (k+1), H, W, C)
    return make_grid(tiles, nrow=len(idx) + 1)


def save_trajectory(path: str | os.PathLike, result, value_range=(-1.0, 1.0)) -> None:
    """Write the strip of a :class:`ddpm.runtime.SampleResult` atomically as PNG."""
    write_png(path, trajectory_grid(result.xt, result.x0, result.samples, value_range=value_range))
