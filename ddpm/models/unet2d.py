"""The ``unet2d`` preset: diffusers' ``UNet2DModel`` behind our model signature.

``UNet2DModel`` is diffusers' implementation of the Ho et al. 2020 DDPM UNet (ResNet
blocks, attention down/up blocks). The adapter lets our trainer, exporter and benchmarks
treat it like any other preset, and lets diffusers load and run our exact network:

- :func:`from_diffusers` wraps an existing ``UNet2DModel`` (e.g. ``from_pretrained``);
- :meth:`UNet2D.to_diffusers` returns the inner model, e.g. for ``DDPMPipeline(unet=...)``;
- state_dict keys are the inner model's with the fixed prefix :data:`PREFIX`.

Config fields mirror the ``UNet2DModel`` keyword arguments, with three renamings to our
common fields: ``image_size`` -> ``sample_size``; ``num_classes`` -> ``num_class_embeds``
(``num_classes + 1`` rows, the last one the NULL label for classifier-free guidance, Ho &
Salimans 2022); ``0`` stands for ``None`` in ``attention_head_dim``,
``attn_norm_num_groups`` and ``time_embedding_dim`` (JSON configs hold no None).
Defaults are the convolution article's MNIST model (seeds/001). diffusers is imported
lazily, only when a model is built.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.layers import (
    check_common,
    check_groups,
    check_tuple,
    coerce_tuples,
    unconditional_forward_check,
)

#: Every state_dict key of the adapter is the inner UNet2DModel's key with this prefix.
PREFIX = "unet."

# Our field -> UNet2DModel kwarg, where the names differ.
_RENAMED = {"image_size": "sample_size", "num_classes": "num_class_embeds"}
# Fields stored as 0 in JSON that mean None to diffusers.
_NONE_AS_ZERO = ("attention_head_dim", "attn_norm_num_groups", "time_embedding_dim")


@dataclass(frozen=True)
class UNet2DConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 28
    num_classes: int = 0
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 2
    norm_num_groups: int = 32
    attention_head_dim: int = 8
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_eps: float = 1e-5
    time_embedding_type: str = "positional"
    time_embedding_dim: int = 0
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    center_input_sample: bool = False
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    attn_norm_num_groups: int = 0

    def __post_init__(self) -> None:
        coerce_tuples(self)
        self.validate()

    def validate(self) -> None:
        check_tuple("unet2d", "block_out_channels", self.block_out_channels)
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types"):
            types = getattr(self, name)
            if not isinstance(types, tuple) or len(types) != n:
                raise ConfigError(
                    f"{name} needs one block type per entry of block_out_channels ({n}), got "
                    f"{types!r} ('unet2d' config)"
                )
        check_common(self, "unet2d", n - 1)
        check_groups(
            "unet2d",
            self.norm_num_groups,
            {f"block_out_channels[{i}]": c for i, c in enumerate(self.block_out_channels)},
        )
        if self.layers_per_block < 1:
            raise ConfigError(f"layers_per_block must be >= 1, got {self.layers_per_block}")

    def diffusers_kwargs(self) -> dict[str, Any]:
        """The ``UNet2DModel(**kwargs)`` this config describes."""
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _NONE_AS_ZERO and value == 0:
                value = None
            kw[_RENAMED.get(f.name, f.name)] = value
        kw["num_class_embeds"] = self.num_classes + 1 if self.num_classes else None
        return kw


def _import_unet2d() -> type:
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ConfigError(
            f"the 'unet2d' preset needs diffusers ({e}); install it with `pip install diffusers`"
        ) from None
    return UNet2DModel


class UNet2D(nn.Module):
    """``UNet2DModel`` with our ``forward(x, t, y=None) -> tensor`` signature."""

    def __init__(self, config: UNet2DConfig, unet: nn.Module | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if unet is None:
            try:
                unet = _import_unet2d()(**config.diffusers_kwargs())
            except (ValueError, TypeError) as e:
                # diffusers rejects unknown block types etc. deep inside its constructors.
                raise ConfigError(
                    f"diffusers UNet2DModel rejected the 'unet2d' config: {e}"
                ) from None
        self.unet = unet  # attribute name = PREFIX without the dot

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.config.num_classes:
            if y is None:
                y = torch.full_like(t, self.config.num_classes)  # the NULL label
        else:
            unconditional_forward_check("unet2d", y)
        return self.unet(x, t, class_labels=y, return_dict=False)[0]

    def to_diffusers(self) -> nn.Module:
        """The inner ``UNet2DModel`` (shared, not copied)."""
        return self.unet


def from_diffusers(unet: nn.Module) -> UNet2D:
    """Wrap a diffusers ``UNet2DModel`` (sharing its weights) as a ``unet2d`` model.

    A class-conditional UNet2DModel with ``num_class_embeds = N`` is read as ``N - 1`` classes
    plus the NULL label, the convention our models train with.
    """
    cls = _import_unet2d()
    if not isinstance(unet, cls):
        raise ConfigError(
            f"from_diffusers needs a diffusers UNet2DModel, got {type(unet).__name__}"
        )
    cfg = dict(unet.config)
    ours = {f.name for f in dataclasses.fields(UNet2DConfig)}
    kwargs: dict[str, Any] = {}
    for f in ours:
        value = cfg.get(_RENAMED.get(f, f))
        if f in _NONE_AS_ZERO and value is None:
            value = 0
        kwargs[f] = tuple(value) if isinstance(value, list) else value
    size = kwargs["image_size"]
    if isinstance(size, tuple):
        if len(set(size)) != 1:
            raise ConfigError(f"unet2d needs a square sample_size, the UNet2DModel has {size}")
        kwargs["image_size"] = size[0]
    n_embeds = int(cfg.get("num_class_embeds") or 0)
    if n_embeds == 1:
        raise ConfigError(
            "the UNet2DModel has num_class_embeds=1: only a NULL label, no classes; "
            "expected None (unconditional) or number of classes + 1"
        )
    kwargs["num_classes"] = max(n_embeds - 1, 0)
    # Refuse UNets using options we do not mirror: rebuilding them from our config would
    # silently produce a different network.
    defaults = {
        k: p.default
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    mirrored = {_RENAMED.get(f, f) for f in ours} | {"num_class_embeds"}
    for k, default in defaults.items():
        if k not in mirrored and k in cfg and cfg[k] != default:
            raise ConfigError(
                f"the UNet2DModel sets {k}={cfg[k]!r}, which the 'unet2d' adapter does not mirror "
                f"(only the default {default!r} is supported)"
            )
    return UNet2D(UNet2DConfig(**kwargs), unet=unet)


def load_diffusers_folder(path: str) -> UNet2D:
    """Load a local diffusers ``UNet2DModel`` folder (config.json + weights), no network."""
    cls = _import_unet2d()
    try:
        unet = cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot load a diffusers UNet2DModel from {path!r}: {e}; expected a folder with "
            "config.json and diffusion_pytorch_model.safetensors"
        ) from None
    return from_diffusers(unet)
