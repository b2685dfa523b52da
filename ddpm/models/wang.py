"""The ``wang`` preset: Phil Wang's denoising-diffusion UNet as described in seeds/004.

Blocks: weight-standardized 3x3 convs (Qiao et al. 2019, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization") followed by GroupNorm; ResNet
blocks whose time MLP predicts a per-channel scale and shift (FiLM, Perez et al. 2018, as
in Dhariwal & Nichol 2021); linear attention (Katharopoulos et al. 2020 / Shen et al. 2021)
in every down and up stage and full softmax attention in the middle; space-to-depth +
1x1 conv downsampling; nearest + 3x3 conv upsampling; ``dim_mults`` width schedule; the
sinusoidal timestep embedding of Ho et al. 2020 -> Linear -> GELU -> Linear.
Optional class conditioning adds a label embedding (NULL row for classifier-free guidance,
Ho & Salimans 2022) to the time embedding.

Fixes relative to the article's code:
- weight standardization computed ``eps`` but divided by sqrt(var) without it (a constant
  filter divides by zero); here rsqrt(var + eps), with tensor ops so it exports to ONNX;
- the final ResNet block was declared with ``2 * dim`` inputs although it receives
  ``2 * init_dim`` (breaks whenever init_dim != dim);
- the sinusoidal embedding wrote sin/cos into a zeros tensor by strided in-place assignment
  (ScatterND in ONNX); here the halves are concatenated.
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
    attention,
    check_common,
    check_groups,
    check_tuple,
    coerce_tuples,
    with_labels,
)


@dataclass(frozen=True)
class WangUNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 16
    num_classes: int = 0
    dim: int = 32
    init_dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2, 4)
    resnet_groups: int = 8
    attn_heads: int = 4
    attn_dim_head: int = 16

    def __post_init__(self) -> None:
        coerce_tuples(self)
        self.validate()

    def validate(self) -> None:
        check_tuple("wang", "dim_mults", self.dim_mults)
        check_common(self, "wang", len(self.dim_mults) - 1)
        if min(self.dim, self.init_dim, self.attn_heads, self.attn_dim_head) < 1:
            raise ConfigError(
                "dim, init_dim, attn_heads and attn_dim_head must all be >= 1 ('wang' config)"
            )
        if self.dim % 2:
            raise ConfigError(
                f"dim must be even (it sizes the sinusoidal embedding), got {self.dim}"
            )
        widths = {"init_dim": self.init_dim, "dim": self.dim}
        widths.update({f"dim * dim_mults[{i}]": self.dim * m for i, m in enumerate(self.dim_mults)})
        check_groups("wang", self.resnet_groups, widths)


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardized per output channel on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = (w - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
        w = (w - mean) * torch.rsqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.proj = WSConv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, c_out)
        self.act = nn.SiLU()

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale is not None and shift is not None:
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
        self.block1 = Block(c_in, c_out, groups)
        self.block2 = Block(c_out, c_out, groups)
        self.res_conv = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(emb)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, C, 1, 1)
        h = self.block2(self.block1(x, scale, shift))
        return h + self.res_conv(x)


class _Attn(nn.Module):
    """Shared pre-GroupNorm(1), bias-free 1x1 qkv projection and residual of both attentions."""

    def __init__(self, channels: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        hidden = heads * dim_head
        self.norm = nn.GroupNorm(1, channels)
        self.to_qkv = nn.Conv2d(channels, 3 * hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, channels, 1)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        return self.to_qkv(self.norm(x)).reshape(-1, 3, self.heads, self.dim_head, h * w)


class LinearAttention(_Attn):
    """O(N) attention: softmax q over features, k over positions, context = k v^T."""

    def __init__(self, channels: int, heads: int, dim_head: int) -> None:
        super().__init__(channels, heads, dim_head)
        self.out_norm = nn.GroupNorm(1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        qkv = self.qkv(x)  # (B, 3, heads, d, HW)
        q = torch.softmax(qkv[:, 0], dim=-2) * self.dim_head**-0.5
        k = torch.softmax(qkv[:, 1], dim=-1)
        context = torch.matmul(k, qkv[:, 2].transpose(-1, -2))  # (B, heads, d, e)
        out = torch.matmul(context.transpose(-1, -2), q)  # (B, heads, e, HW)
        out = out.reshape(-1, self.heads * self.dim_head, h, w)
        return x + self.out_norm(self.to_out(out))


class FullAttention(_Attn):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        qkv = self.qkv(x).transpose(-1, -2)  # (B, 3, heads, HW, d)
        out = attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # (B, heads, HW, d)
        out = out.transpose(-1, -2).reshape(-1, self.heads * self.dim_head, h, w)
        return x + self.to_out(out)


class Downsample(nn.Module):
    """Space-to-depth (2x2 pixels -> 4x channels), then a 1x1 conv: lossless, unlike pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4 * c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        x = x.reshape(-1, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B,C,2,2,H/2,W/2)
        return self.conv(x.reshape(-1, 4 * c, h // 2, w // 2))


class Upsample(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stage(nn.Module):
    def __init__(self, block1: nn.Module, block2: nn.Module, attn: nn.Module, resample: nn.Module):
        super().__init__()
        self.block1, self.block2, self.attn, self.resample = block1, block2, attn, resample


class WangUNet(nn.Module):
    def __init__(self, config: WangUNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        g, heads, dh = c.resnet_groups, c.attn_heads, c.attn_dim_head
        emb = 4 * c.dim
        self.init_conv = nn.Conv2d(c.in_channels, c.init_dim, 7, padding=3)
        self.time_mlp = nn.Sequential(
            TimestepEmbedding(c.dim), nn.Linear(c.dim, emb), nn.GELU(), nn.Linear(emb, emb)
        )
        self.label_embed = LabelEmbedding(c.num_classes, emb) if c.num_classes else None

        dims = [c.init_dim] + [c.dim * m for m in c.dim_mults]
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.downs = nn.ModuleList()
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.downs.append(
                _Stage(
                    ResnetBlock(a, a, emb, g),
                    ResnetBlock(a, a, emb, g),
                    LinearAttention(a, heads, dh),
                    nn.Conv2d(a, b, 3, padding=1) if last else Downsample(a, b),
                )
            )
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, emb, g)
        self.mid_attn = FullAttention(mid, heads, dh)
        self.mid_block2 = ResnetBlock(mid, mid, emb, g)
        self.ups = nn.ModuleList()
        for i, (a, b) in enumerate(reversed(pairs)):
            last = i == len(pairs) - 1
            self.ups.append(
                _Stage(
                    ResnetBlock(b + a, b, emb, g),
                    ResnetBlock(b + a, b, emb, g),
                    LinearAttention(b, heads, dh),
                    nn.Conv2d(b, a, 3, padding=1) if last else Upsample(b, a),
                )
            )
        self.final_res_block = ResnetBlock(2 * c.init_dim, c.dim, emb, g)
        self.final_conv = nn.Conv2d(c.dim, c.out_channels, 1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = with_labels("wang", self.time_mlp(t), self.label_embed, y, t)

        x = self.init_conv(x)
        r = x
        hs = []
        for s in self.downs:
            x = s.block1(x, emb)
            hs.append(x)
            x = s.attn(s.block2(x, emb))
            hs.append(x)
            x = s.resample(x)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, emb)), emb)
        for s in self.ups:
            x = s.block1(torch.cat([x, hs.pop()], dim=1), emb)
            x = s.block2(torch.cat([x, hs.pop()], dim=1), emb)
            x = s.resample(s.attn(x))
        x = self.final_res_block(torch.cat([x, r], dim=1), emb)
        return self.final_conv(x)
