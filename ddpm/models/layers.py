"""Building blocks shared by the UNet presets, plus config checks they all run.

- :class:`TimestepEmbedding`: the sinusoidal encoding of an integer timestep from the
  Transformer (Vaswani et al. 2017, sec. 3.5) as used for diffusion by Ho et al. 2020
  (appendix B): ``[sin(t * f_i), cos(t * f_i)]`` with ``f_i = 10000^(-i / half)``.
- :class:`LabelEmbedding`: class-label table with one extra row, the NULL label used for
  classifier-free guidance (Ho & Salimans 2022): label ``num_classes`` means "no class".
- :func:`attention`: softmax(q k^T / sqrt(d)) v written with MatMul/Softmax so the legacy
  ONNX tracer and ONNX Runtime's CPU kernels handle it well.

Everything here is trace- and export-friendly: no Python branches on tensor values, no
in-place writes, batch size never baked into a reshape.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ddpm.errors import ConfigError


class TimestepEmbedding(nn.Module):
    """(B,) int64 timesteps -> (B, dim) float sinusoidal features."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"timestep embedding size must be an even number >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        # Not persistent: derived from `dim`, so it stays out of state_dict and checkpoints.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Cast inside the graph: exported models take the same int64 timesteps as torch.
        args = t.float()[:, None] * self.freqs[None, :]  # (B, half)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class LabelEmbedding(nn.Module):
    """(B,) int64 labels or None -> (B, dim); row ``num_classes`` is the NULL label."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.null_label = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        if y is None:
            # All-null labels shaped like t, so the batch size stays dynamic under tracing.
            y = torch.full_like(t, self.null_label)
        return self.table(y)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over (..., N, d) tensors; returns (..., N, d)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    weights = torch.softmax(torch.matmul(q * scale, k.transpose(-1, -2)), dim=-1)  # (..., N, N)
    return torch.matmul(weights, v)


def unconditional_forward_check(arch: str, y: torch.Tensor | None) -> None:
    """Labels given to an unconditional model are a caller bug; ignoring them would hide it."""
    if y is not None:
        raise ConfigError(
            f"the {arch!r} model is unconditional (num_classes=0) but class labels were passed; "
            "call model(x, t) or build it with num_classes > 0"
        )


def with_labels(
    arch: str, emb: torch.Tensor, label_embed: nn.Module | None, y: torch.Tensor | None,
    t: torch.Tensor,
) -> torch.Tensor:
    """The timestep embedding plus the label embedding of a conditional model (y=None: the
    null label); an unconditional model refuses labels instead of silently ignoring them."""
    if label_embed is not None:
        return emb + label_embed(y, t)
    unconditional_forward_check(arch, y)
    return emb


def coerce_tuples(config) -> None:
    """Let frozen configs take lists (JSON arrays, CLI overrides) where they store tuples."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, list):
            object.__setattr__(config, f.name, tuple(value))


def check_common(config, arch: str, num_downsamples: int, conditional: bool = True) -> None:
    """Checks every preset shares: positive sizes, divisible image size, class support."""
    for name in ("in_channels", "out_channels", "image_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r} ({arch!r} config)")
    if not isinstance(config.num_classes, int) or config.num_classes < 0:
        raise ConfigError(
            f"num_classes must be an integer >= 0 (0 = unconditional), got {config.num_classes!r}"
        )
    if config.num_classes > 0 and not conditional:
        raise ConfigError(
            f"the {arch!r} preset cannot be class-conditional (num_classes={config.num_classes}); "
            "use num_classes=0 or a conditional preset such as 'ddpm'"
        )
    factor = 2**num_downsamples
    size = config.image_size
    if size % factor:
        lower, upper = (size // factor) * factor, (size // factor + 1) * factor
        fix = f"use {lower} or {upper}" if lower else f"use {upper}"
        raise ConfigError(
            f"image size {size} is not divisible by {factor} ({num_downsamples} downsamplings "
            f"of the {arch!r} UNet); {fix}"
        )


def check_groups(arch: str, groups: int, channels: dict[str, int]) -> None:
    """GroupNorm needs every normalised channel count divisible by its group count."""
    if groups < 1:
        raise ConfigError(f"GroupNorm group count must be >= 1, got {groups} ({arch!r} config)")
    for where, c in channels.items():
        if c % groups:
            raise ConfigError(
                f"GroupNorm with {groups} groups cannot normalise {c} channels ({where}) in the "
                f"{arch!r} UNet; use channel counts that are multiples of {groups}"
            )


def check_tuple(arch: str, name: str, values: tuple, minimum: int = 1) -> None:
    """A non-empty tuple of integers >= minimum (channel counts, multipliers)."""
    if not isinstance(values, tuple) or not values:
        raise ConfigError(f"{name} must be a non-empty list of integers, got {values!r}")
    bad = [v for v in values if not isinstance(v, int) or v < minimum]
    if bad:
        raise ConfigError(
            f"{name} entries must be integers >= {minimum} ({arch!r} config), got {values!r}"
        )
