"""The denoising strip: x_t and the predicted x_0 every few steps, labelled, as one image.

For each of the first K samples the strip has two rows, left to right from x_T to the final
image: the noisy x_t the model saw at a step ("k xt"), and below it the x̂0 it predicted
there ("k x0"); the column header gives the step's timestep t ("out" for the final image).
Labels are drawn with a built-in 3x5 pixel font, so no font library is needed.
"""

from __future__ import annotations

import os

import numpy as np

from ddpm import defaults
from ddpm.errors import ConfigError
from ddpm.images import make_grid, to_uint8, upscale, write_image

_GLYPHS = {  # 3x5 bitmaps, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", "x": "000101010101000", "t": "010111010010011",
    "o": "000111101101111", "u": "000101101101111", "#": "101111101111101", "=": "000111000111000",
    " ": "000000000000000",
}
PAD = 2  # grid padding, as in make_grid


def text_mask(text: str) -> np.ndarray:
    """bool (5, 4 * len(text) - 1) bitmap of ``text`` (characters of the built-in font)."""
    cols = []
    for ch in text:
        if ch not in _GLYPHS:
            raise ConfigError(f"the strip font has no glyph for {ch!r}", field="text")
        cols.append(np.array([int(b) for b in _GLYPHS[ch]], bool).reshape(5, 3))
        cols.append(np.zeros((5, 1), bool))
    return np.concatenate(cols[:-1], axis=1) if cols else np.zeros((5, 0), bool)


def draw_text(canvas: np.ndarray, y: int, x: int, text: str, size: int) -> None:
    """Draw ``text`` in white into ``canvas`` (H, W, C) with its top-left at (y, x), each
    font pixel ``size`` x ``size``; clipped at the canvas edge."""
    m = upscale(text_mask(text)[:, :, None].astype(np.uint8), size)[:, :, 0].astype(bool)
    h, w = m.shape
    region = canvas[y : y + h, x : x + w]
    region[m[: region.shape[0], : region.shape[1]]] = 255


def strip_steps(num_steps: int, columns: int = 8) -> np.ndarray:
    """Evenly spaced loop indices 0..num_steps-1 (always including the first and last)."""
    k = max(1, min(columns, num_steps))
    return np.unique(np.linspace(0, num_steps - 1, k).round().astype(np.int64))


def trajectory_grid(
    xt: np.ndarray,
    x0: np.ndarray,
    final: np.ndarray,
    *,
    timesteps: np.ndarray | None = None,
    max_samples: int = defaults.TRAJECTORY_SAMPLES,
    columns: int = 8,
    value_range: tuple[float, float] = (-1.0, 1.0),
    scale: int | None = None,
) -> np.ndarray:
    """uint8 (H', W', C) labelled strip from ``xt``/``x0`` (steps, N, C, H, W) and ``final``
    (N, C, H, W); ``timesteps`` (steps,) label the columns; ``scale`` None: the grid default."""
    if xt is None or x0 is None:
        raise ConfigError("no trajectory recorded; call sample(..., trajectory=True)", field="trajectory")
    idx = strip_steps(xt.shape[0], columns)
    samples = range(min(max_samples, xt.shape[1]))
    rows = []
    for s in samples:
        rows.append(np.concatenate([xt[idx, s], final[s : s + 1]]))  # x_t row, ends in x_0
        rows.append(np.concatenate([x0[idx, s], final[s : s + 1]]))  # x̂0 row
    tiles = to_uint8(np.concatenate(rows), value_range)  # (rows * (k+1), H, W, C)
    h, w = tiles.shape[1:3]
    grid = make_grid(tiles, nrow=len(idx) + 1, pad=PAD)
    scale = scale or defaults.grid_scale(*grid.shape[:2])
    grid = upscale(grid, scale)
    col_labels = [f"t={int(timesteps[i])}" if timesteps is not None else f"{int(i)}" for i in idx] + ["out"]
    row_labels = [f"{s} {kind}" for s in samples for kind in ("xt", "x0")]
    cell_w, cell_h = (w + PAD) * scale, (h + PAD) * scale
    size = max(1, min(cell_w // (4 * max(len(t) for t in col_labels)), cell_h // 7))
    top, left = 7 * size, 4 * size * max(len(t) for t in row_labels) + size
    canvas = np.zeros((grid.shape[0] + top, grid.shape[1] + left, grid.shape[2]), np.uint8)
    canvas[top:, left:] = grid
    for j, text in enumerate(col_labels):
        draw_text(canvas, size, left + PAD * scale + j * cell_w, text, size)
    for r, text in enumerate(row_labels):
        draw_text(canvas, top + PAD * scale + r * cell_h + (h * scale - 5 * size) // 2, size // 2, text, size)
    return canvas


def save_trajectory(
    path: str | os.PathLike, result, value_range=(-1.0, 1.0), *,
    samples: int = defaults.TRAJECTORY_SAMPLES, scale: int | None = None,
) -> None:
    """Write the strip of a :class:`ddpm.runtime.SampleResult` atomically (format from
    ``path``'s extension)."""
    write_image(path, trajectory_grid(
        result.xt, result.x0, result.samples, timesteps=result.timesteps, max_samples=samples,
        value_range=value_range, scale=scale,
    ))
