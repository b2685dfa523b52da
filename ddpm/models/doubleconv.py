"""The ``doubleconv`` preset: the UNet of the "minimal diffusion from scratch" blog (seeds/002).

A U-Net (Ronneberger et al. 2015) built from DoubleConv blocks (GroupNorm(1) -> 3x3 conv ->
GELU -> GroupNorm(1) -> 3x3 conv, with a GELU'd residual when shapes allow). Each Down is
MaxPool + DoubleConv(residual) + DoubleConv, each Up is nearest upsample + concatenated skip
+ DoubleConv(residual) + DoubleConv; both then add a SiLU -> Linear projection of the
sinusoidal timestep encoding (Ho et al. 2020). A DoubleConv between stages changes the width,
as in the blog (conv1 .. conv8). Optional class conditioning adds a label embedding (with a
NULL row for classifier-free guidance, Ho & Salimans 2022) to the timestep encoding.

Bugs in the blog's code that this version fixes:
- ``DoubleConv.forward`` calls ``self.next`` (no such attribute) instead of ``self.net``;
- ``nn.SiLU`` is put in ``nn.Sequential`` uninstantiated (the class, not a module);
- ``.view(-1, -1, 1, 1)`` has two inferred dims and raises; the ``.repeat`` to H x W is
  unneeded (broadcasting adds the (B, C, 1, 1) embedding);
- ``nn.Upsample(mode="nearest", align_corners=True)`` raises: align_corners is only for
  interpolating modes;
- the Up block's ``DoubleConv(in, out, 1/2)`` passes a float width multiplier to Conv2d;
- ``pos_encoding`` reads an undefined ``device`` / ``self.device``;
- training draws ``torch.rand_like`` (uniform) noise instead of Gaussian, samples t up to
  the schedule length (off by one) and regresses the clean image while calling it noise.
The blog's widths (64 .. 512, four downsamplings) are configurable; the default is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ddpm.errors import ConfigError
from ddpm.models.layers import (
    LabelEmbedding,
    TimestepEmbedding,
    check_level_channels,
    coerce_tuples,
    with_labels,
)


@dataclass(frozen=True)
class DoubleConvUNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 16
    num_classes: int = 0
    channels: tuple[int, ...] = (32, 64, 64)
    time_dim: int = 128

    def __post_init__(self) -> None:
        coerce_tuples(self)
        self.validate()

    def validate(self) -> None:
        check_level_channels(self, "doubleconv")


class DoubleConv(nn.Module):
    """Two pre-normed 3x3 convs; with ``residual`` the output is GELU(x + net(x))."""

    def __init__(self, c_in: int, c_out: int, residual: bool = False) -> None:
        super().__init__()
        if residual and c_in != c_out:
            raise ConfigError(f"a residual DoubleConv needs c_in == c_out, got {c_in}, {c_out}")
        self.residual = residual
        self.net = nn.Sequential(
            nn.GroupNorm(1, c_in),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GELU(),
            nn.GroupNorm(1, c_out),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.net(x)) if self.residual else self.net(x)


class TimeAdd(nn.Module):
    """SiLU -> Linear of the (B, E) embedding, broadcast-added to a (B, C, H, W) map."""

    def __init__(self, emb_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.proj(emb)[:, :, None, None]


class Down(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.MaxPool2d(2), DoubleConv(c_in, c_in, residual=True), DoubleConv(c_in, c_out)
        )
        self.time = TimeAdd(emb_dim, c_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.time(self.block(x), emb)


class Up(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(DoubleConv(c_in, c_in, residual=True), DoubleConv(c_in, c_out))
        self.time = TimeAdd(emb_dim, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.time(self.block(torch.cat([skip, x], dim=1)), emb)


class DoubleConvUNet(nn.Module):
    def __init__(self, config: DoubleConvUNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        w, e = c.channels, c.time_dim
        self.time_embed = TimestepEmbedding(e)
        self.label_embed = LabelEmbedding(c.num_classes, e) if c.num_classes else None
        # Encoder: conv_in, then per level Down (same width) + DoubleConv (widen) -- the blog's
        # conv1, down1, conv2, down2, ... The last DoubleConv is the bottleneck.
        self.conv_in = DoubleConv(c.in_channels, w[0])
        self.downs = nn.ModuleList(Down(a, a, e) for a in w[:-1])
        self.down_convs = nn.ModuleList(
            DoubleConv(a, b) for a, b in zip(w[:-1], w[1:], strict=True)
        )
        # Decoder mirrors it: Up (concat skip of width w[i]) then DoubleConv narrowing to w[i-1].
        self.ups, self.up_convs = nn.ModuleList(), nn.ModuleList()
        c_cur = w[-1]
        for i in range(len(w) - 2, -1, -1):
            self.ups.append(Up(c_cur + w[i], w[i], e))
            if i > 0:
                self.up_convs.append(DoubleConv(w[i], w[i - 1]))
            c_cur = w[i - 1] if i > 0 else w[0]
        self.conv_out = nn.Conv2d(w[0], c.out_channels, 1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = with_labels("doubleconv", self.time_embed(t), self.label_embed, y, t)

        h = self.conv_in(x)
        skips = [h]
        for down, conv in zip(self.downs, self.down_convs, strict=True):
            h = conv(down(h, emb))
            skips.append(h)
        skips.pop()  # the bottleneck output is h itself, not a skip
        for i, up in enumerate(self.ups):
            h = up(h, skips.pop(), emb)
            if i < len(self.up_convs):
                h = self.up_convs[i](h)
        return self.conv_out(h)
