"""The ``ddpm`` preset: the UNet of Ho et al. 2020, "Denoising Diffusion Probabilistic Models".

Architecture (paper appendix B, a PixelCNN++-style wide-ResNet UNet):
sinusoidal timestep embedding -> MLP; per resolution level ``num_res_blocks`` residual
blocks (GroupNorm, SiLU, 3x3 conv, timestep projection added, GroupNorm, SiLU, dropout,
3x3 conv) with single-head self-attention at the resolutions in ``attn_resolutions``;
strided-conv downsampling, nearest+conv upsampling, concatenated skips, and a
ResBlock-Attention-ResBlock middle. As in the paper's code, the last conv of each residual
block and each attention output projection start at zero, so every block starts as the
identity and deep stacks train stably.

Optional class conditioning (``num_classes > 0``): a label embedding with a NULL row
(classifier-free guidance, Ho & Salimans 2022) is added to the timestep embedding.

``attn_resolutions`` are pixel sizes, as in the paper (16 for 32x32 CIFAR-10). The UNet
visits ``image_size / 2**i`` for each level i; listed sizes it never visits add no attention
(the middle block always has one), so one config serves several image sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.layers import (
    LabelEmbedding,
    TimestepEmbedding,
    attention,
    check_common,
    check_groups,
    check_tuple,
    coerce_tuples,
    with_labels,
)


@dataclass(frozen=True)
class DDPMUNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 16
    num_classes: int = 0
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (8,)
    dropout: float = 0.1
    num_groups: int = 8

    def __post_init__(self) -> None:
        coerce_tuples(self)
        self.validate()

    def validate(self) -> None:
        check_tuple("ddpm", "channel_mults", self.channel_mults)
        if self.attn_resolutions:  # empty = attention only in the middle block
            check_tuple("ddpm", "attn_resolutions", self.attn_resolutions)
        check_common(self, "ddpm", len(self.channel_mults) - 1)
        if self.base_channels < 1 or self.num_res_blocks < 1:
            raise ConfigError(
                f"base_channels and num_res_blocks must be >= 1, got {self.base_channels} and "
                f"{self.num_res_blocks} ('ddpm' config)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout} ('ddpm' config)")
        check_groups(
            "ddpm",
            self.num_groups,
            {
                f"base_channels * channel_mults[{i}]": self.base_channels * m
                for i, m in enumerate(self.channel_mults)
            },
        )

    def resolutions(self) -> list[int]:
        """Feature-map size at each level, top to bottom."""
        return [self.image_size // 2**i for i in range(len(self.channel_mults))]


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # `emb` arrives already passed through SiLU (done once per forward, not per block).
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(-1, 3, c, h * w).transpose(-1, -2)  # (B, 3, HW, C)
        out = attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (B, HW, C)
        return x + self.proj(out.transpose(1, 2).reshape(-1, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """The blocks of one resolution level: ResBlocks, each optionally followed by attention."""

    def __init__(self, blocks: list[ResBlock], attn: list[nn.Module]) -> None:
        super().__init__()
        self.res = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)


class DDPMUNet(nn.Module):
    def __init__(self, config: DDPMUNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        ch, emb_dim, g = c.base_channels, 4 * c.base_channels, c.num_groups
        self.time_embed = nn.Sequential(
            TimestepEmbedding(ch), nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_embed = LabelEmbedding(c.num_classes, emb_dim) if c.num_classes else None
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)

        def level(c_ins: list[int], c_out: int, res: int) -> _Level:
            use_attn = res in c.attn_resolutions
            return _Level(
                [ResBlock(ci, c_out, emb_dim, c.dropout, g) for ci in c_ins],
                [AttnBlock(c_out, g) if use_attn else nn.Identity() for _ in c_ins],
            )

        widths = [ch * m for m in c.channel_mults]
        resolutions = c.resolutions()
        skips = [ch]  # channel count of every tensor pushed on the skip stack
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c_cur = ch
        for i, (w, res) in enumerate(zip(widths, resolutions, strict=True)):
            self.down.append(level([c_cur] + [w] * (c.num_res_blocks - 1), w, res))
            c_cur = w
            skips += [w] * c.num_res_blocks
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else Downsample(w))
            if not last:
                skips.append(w)

        self.mid1 = ResBlock(c_cur, c_cur, emb_dim, c.dropout, g)
        self.mid_attn = AttnBlock(c_cur, g)
        self.mid2 = ResBlock(c_cur, c_cur, emb_dim, c.dropout, g)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, (w, res) in reversed(list(enumerate(zip(widths, resolutions, strict=True)))):
            c_ins = []
            for _ in range(c.num_res_blocks + 1):
                c_ins.append(c_cur + skips.pop())
                c_cur = w
            self.up.append(level(c_ins, w, res))
            self.upsample.append(Upsample(w) if i > 0 else nn.Identity())

        self.norm_out = nn.GroupNorm(g, c_cur)
        self.conv_out = nn.Conv2d(c_cur, c.out_channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = with_labels("ddpm", self.time_embed(t), self.label_embed, y, t)  # (B, 4 * base_channels)
        emb = self.act(emb)

        h = self.conv_in(x)
        hs = [h]
        for lvl, down in zip(self.down, self.downsample, strict=True):
            for res, attn in zip(lvl.res, lvl.attn, strict=True):
                h = attn(res(h, emb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for lvl, up in zip(self.up, self.upsample, strict=True):
            for res, attn in zip(lvl.res, lvl.attn, strict=True):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))
            h = up(h)
        return self.conv_out(self.act(self.norm_out(h)))
