"""Image grids and PNG output with numpy + zlib only (no pillow, no torch).

The runtime writes PNGs with this module, so ``pip install ddpm-toolkit[cpu]`` needs nothing else.
"""

from __future__ import annotations

import math
import os
import struct
import zlib

import numpy as np

from ddpm._io import atomic_write_bytes


def to_uint8(x: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Float images (N, C, H, W) in ``value_range`` -> uint8 (N, H, W, C)."""
    lo, hi = value_range
    y = (np.asarray(x, dtype=np.float32) - lo) / (hi - lo)
    y = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1))


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (H', W', C) grid, ``nrow`` images per row."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {images.shape}")
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, images.dtype)
    for k in range(n):
        r, col = divmod(k, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[k]
    return grid


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> PNG bytes."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"PNG needs uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        color_type, channels = 0, 1
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        color_type, channels = (2, 3) if a.shape[2] == 3 else (6, 4)
    else:
        raise ValueError(f"cannot write an image of shape {a.shape} as PNG")
    h, w = a.shape[:2]
    raw = np.zeros((h, 1 + w * channels), np.uint8)  # filter byte 0 per row
    raw[:, 1:] = a.reshape(h, w * channels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 image as PNG atomically (temp file + os.replace)."""
    atomic_write_bytes(path, encode_png(image))


def save_grid(path: str | os.PathLike, images: np.ndarray, nrow: int | None = None) -> None:
    """uint8 (N, H, W, C) images -> a PNG grid at ``path``, written atomically."""
    write_png(path, make_grid(images, nrow=nrow))
