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


#: Config field -> the ``ddpm.limits`` bound its value (or each entry) must respect.
#: Fields not listed fall back on the name: "*channels*" / "*dim*" -> CHANNELS.
FIELD_LIMITS = {
    "in_channels": "IMAGE_CHANNELS", "out_channels": "IMAGE_CHANNELS",
    "image_size": "IMAGE_SIZE", "num_classes": "NUM_CLASSES", "attn_resolutions": "IMAGE_SIZE",
    "channel_mults": "MULT", "dim_mults": "MULT",
    "num_res_blocks": "BLOCKS", "layers_per_block": "BLOCKS", "num_heads": "BLOCKS",
    "attn_heads": "BLOCKS", "attn_dim_head": "CHANNELS", "attention_head_dim": "CHANNELS",
    "kernel_size": "BLOCKS", "num_groups": "CHANNELS", "norm_num_groups": "CHANNELS",
    "resnet_groups": "CHANNELS", "attn_norm_num_groups": "CHANNELS",
}


def _bound_for(name: str) -> str | None:
    if name in FIELD_LIMITS:
        return FIELD_LIMITS[name]
    if "channels" in name or "dim" in name:
        return "CHANNELS"
    return None


def check_bounds(config, arch: str) -> None:
    """Types and ``ddpm.limits`` upper bounds of every numeric field, before any allocation.

    A string where an int belongs, a bool, NaN, or ``base_channels`` 200000 fails here with a
    one-line ConfigError naming the field, instead of deep inside torch (or after swapping).
    """
    from ddpm import limits

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = str(f.type)
        what = f"{f.name} ({arch!r} config)"
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{what} must be true or false, got {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value)
            ):
                raise ConfigError(f"{what} must be a finite number, got {value!r}")
        elif kind == "str" or kind.startswith("tuple[str"):
            items = value if kind.startswith("tuple") else (value,)
            if not isinstance(items, tuple) or not all(isinstance(v, str) for v in items):
                raise ConfigError(f"{what} must be text, got {value!r}")
        elif kind == "int" or kind.startswith("tuple[int"):
            name = _bound_for(f.name) or "CHANNELS"
            if kind.startswith("tuple"):
                if not isinstance(value, tuple):
                    raise ConfigError(
                        f"{what} must be a list of integers, got {value!r} "
                        f"({type(value).__name__})"
                    )
                limits.check_int(f"length of {what}", max(len(value), 1), "LEVELS")
                clean = tuple(limits.check_int(f"entry of {what}", v, name, minimum=0)
                              for v in value)
            else:
                clean = limits.check_int(what, value, name, minimum=-(2**31))
            object.__setattr__(config, f.name, clean)  # 16.0 from JSON -> 16
    base = getattr(config, "base_channels", None) or getattr(config, "dim", None)
    mults = getattr(config, "channel_mults", None) or getattr(config, "dim_mults", None)
    if isinstance(base, int) and isinstance(mults, tuple) and mults:
        limits.check_int(f"widest layer base x max(mults) ({arch!r} config)",
                         base * max(mults), "CHANNELS")


def check_common(config, arch: str, num_downsamples: int, conditional: bool = True) -> None:
    """Checks every preset shares: types and upper bounds (:func:`check_bounds`), positive
    sizes, divisible image size, class support."""
    check_bounds(config, arch)
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


def check_level_channels(config, arch: str) -> None:
    """The checks of presets whose ``channels`` lists one width per resolution level and that
    embed t in ``time_dim`` (cond, doubleconv): >= 2 levels, the shared checks, even time_dim."""
    check_tuple(arch, "channels", config.channels)
    if len(config.channels) < 2:
        raise ConfigError(
            f"channels needs at least 2 entries (one per resolution level), got "
            f"{config.channels!r} ('{arch}' config)"
        )
    check_common(config, arch, len(config.channels) - 1)
    if config.time_dim < 2 or config.time_dim % 2:
        raise ConfigError(f"time_dim must be an even number >= 2, got {config.time_dim}")

