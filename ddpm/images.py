"""Image grids and image files: PNG with numpy + zlib only; JPEG/WebP through Pillow.

The runtime writes PNGs with this module, so ``pip install ddpm-toolkit[cpu]`` needs nothing
else. The output file's extension decides its format; JPEG and WebP need Pillow and fail
with a one-line OutputError naming the install command when it is missing.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ddpm._io import atomic_write_bytes
from ddpm.errors import ConfigError, OutputError

#: Output extension -> Pillow format name (None: written by :func:`encode_png`, no Pillow).
FORMATS = {".png": None, ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def to_uint8(x: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Float images (N, C, H, W) in ``value_range`` -> uint8 (N, H, W, C)."""
    lo, hi = value_range
    y = (np.asarray(x, dtype=np.float32) - lo) / (hi - lo)
    y = np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, C) -> (H*scale, W*scale, C) by pixel repetition (nearest neighbour)."""
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ConfigError(f"scale must be an integer >= 1, got {scale!r}", field="scale")
    if scale == 1:
        return image
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def make_grid(
    images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 0, scale: int = 1
) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (H', W', C) grid, ``nrow`` images per row, then
    enlarged ``scale`` times."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ConfigError(f"expected images of shape (N, H, W, C), got {images.shape}", field="images")
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, images.dtype)
    for k in range(n):
        r, col = divmod(k, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[k]
    return upscale(grid, scale)


def _check_pixels(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ConfigError(f"images need uint8 pixels, got {a.dtype}", field="image")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ConfigError(f"cannot write an image of shape {a.shape}; expected (H, W[, 1|3|4])", field="image")
    return a


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> PNG bytes."""
    a = _check_pixels(np.asarray(image))
    color_type, channels = (0, 1) if a.ndim == 2 else ((2, 3) if a.shape[2] == 3 else (6, 4))
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


def image_format(path: str | os.PathLike) -> str | None:
    """The Pillow format for ``path``'s extension (None for PNG); OutputError if unsupported
    or if it needs Pillow and Pillow is not installed."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise OutputError(
            f"cannot tell the image format of {str(path)!r} (extension {ext or 'none'!r}); "
            f"use one of {', '.join(FORMATS)}", field="out",
        )
    fmt = FORMATS[ext]
    if fmt is not None:
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise OutputError(
                f"writing {ext} needs Pillow, which is not installed; `pip install pillow` "
                "or write a .png", field="out",
            ) from None
    return fmt


def encode_image(image: np.ndarray, fmt: str | None) -> bytes:
    """uint8 image -> file bytes in ``fmt`` (a Pillow format name, or None for PNG)."""
    if fmt is None:
        return encode_png(image)
    from PIL import Image

    a = _check_pixels(np.asarray(image))
    if fmt == "JPEG" and a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]  # JPEG has no alpha
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 image atomically in the format ``path``'s extension names."""
    atomic_write_bytes(path, encode_image(image, image_format(path)))


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 image as PNG atomically (temp file + os.replace), whatever the name."""
    atomic_write_bytes(path, encode_png(image))


def save_grid(path: str | os.PathLike, images: np.ndarray, nrow: int | None = None, scale: int = 1) -> None:
    """uint8 (N, H, W, C) images -> a grid image at ``path`` (format from its extension)."""
    write_image(path, make_grid(images, nrow=nrow, scale=scale))
