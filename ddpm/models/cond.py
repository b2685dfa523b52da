"""The ``cond`` preset: the class-conditional UNet of the "visual introduction" article (seeds/003).

A U-Net (Ronneberger et al. 2015) whose "ResNet blocks" are the pre-normed double 3x3
convs of :mod:`ddpm.models.doubleconv`; MaxPool downsampling; after every Down and Up a
transformer-style self-attention block over the H*W positions (Vaswani et al. 2017):
LayerNorm -> multi-head attention -> residual -> LayerNorm -> Linear -> GELU -> Linear ->
residual. A 3-block bottleneck widens to 2x the deepest width and back. The sinusoidal
timestep encoding (Ho et al. 2020) plus the class embedding (with a NULL row for
classifier-free guidance, Ho & Salimans 2022) go through SiLU -> Linear into every Down/Up.

Departure from the article: its last Up block also attends at full resolution, whose cost
grows with (H*W)^2; that block is off unless ``full_res_attention`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.doubleconv import DoubleConv, Down, Up
from ddpm.models.layers import (
    LabelEmbedding,
    TimestepEmbedding,
    attention,
    check_level_channels,
    coerce_tuples,
    with_labels,
)


@dataclass(frozen=True)
class CondUNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 16
    num_classes: int = 0
    channels: tuple[int, ...] = (32, 64, 64)
    time_dim: int = 128
    num_heads: int = 4
    full_res_attention: bool = False

    def __post_init__(self) -> None:
        coerce_tuples(self)
        self.validate()

    def validate(self) -> None:
        check_level_channels(self, "cond")
        bad = [c for c in self.channels if self.num_heads < 1 or c % self.num_heads]
        if bad:
            raise ConfigError(
                f"num_heads {self.num_heads} must divide every attention width, but not "
                f"{bad} (channels {self.channels!r}); pick num_heads dividing all channels"
            )


class SelfAttention(nn.Module):
    """Pre-LN multi-head self-attention + GELU feed-forward over a (B, C, H, W) map."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.heads = num_heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        self.ff = nn.Sequential(
            nn.LayerNorm(channels),
            nn.Linear(channels, channels),
            nn.GELU(),
            nn.Linear(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        n, d = h * w, c // self.heads
        seq = x.reshape(-1, c, n).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(self.norm1(seq)).reshape(-1, n, 3, self.heads, d)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, HW, d)
        a = attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(-1, n, c)  # (B, HW, C)
        seq = seq + self.out(a)
        seq = seq + self.ff(seq)
        return seq.transpose(1, 2).reshape(-1, c, h, w)


class CondUNet(nn.Module):
    def __init__(self, config: CondUNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        w, e, heads = c.channels, c.time_dim, c.num_heads
        self.time_embed = TimestepEmbedding(e)
        self.label_embed = LabelEmbedding(c.num_classes, e) if c.num_classes else None
        self.conv_in = DoubleConv(c.in_channels, w[0])
        self.downs = nn.ModuleList(Down(a, b, e) for a, b in zip(w[:-1], w[1:], strict=True))
        self.down_attn = nn.ModuleList(SelfAttention(b, heads) for b in w[1:])
        self.bottleneck = nn.Sequential(
            DoubleConv(w[-1], 2 * w[-1]),
            DoubleConv(2 * w[-1], 2 * w[-1]),
            DoubleConv(2 * w[-1], w[-1]),
        )
        # Up at skip level i: (current + skip w[i]) -> w[i-1], so the next skip matches.
        self.ups, self.up_attn = nn.ModuleList(), nn.ModuleList()
        c_cur = w[-1]
        for i in range(len(w) - 2, -1, -1):
            c_out = w[max(i - 1, 0)]
            self.ups.append(Up(c_cur + w[i], c_out, e))
            full_res = i == 0
            use = not full_res or c.full_res_attention
            self.up_attn.append(SelfAttention(c_out, heads) if use else nn.Identity())
            c_cur = c_out
        self.conv_out = nn.Conv2d(c_cur, c.out_channels, 1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = with_labels("cond", self.time_embed(t), self.label_embed, y, t)

        h = self.conv_in(x)
        skips = [h]
        for down, attn in zip(self.downs, self.down_attn, strict=True):
            h = attn(down(h, emb))
            skips.append(h)
        skips.pop()  # the deepest map feeds the bottleneck, not a skip
        h = self.bottleneck(h)
        for up, attn in zip(self.ups, self.up_attn, strict=True):
            h = attn(up(h, skips.pop(), emb))
        return self.conv_out(h)
