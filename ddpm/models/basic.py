"""The ``basic`` preset: the minimal BasicUNet of the convolution article (seeds/001).

Three 5x5 convolutions down (MaxPool between), three up (nearest Upsample between),
additive skip connections, SiLU activations; after Ronneberger et al. 2015, "U-Net".
It has no timestep or class input: the article trains it to predict the clean image from
a noisy one at any noise level. ``forward`` takes ``t`` to share the presets' signature but
ignores it (see below for how it stays an input of the exported graph).

Differences from the article's code, and why:
- no activation after the last conv: a SiLU there bounds outputs below at about -0.28,
  which breaks epsilon- and v-prediction targets (the article predicts x0 in [0, 1]);
- the skip is added out of place (``x += h.pop()`` mutates a tensor autograd saved);
- channel widths are configurable (default: the article's 32, 64, 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddpm.errors import ConfigError
from ddpm.models.layers import check_common, check_tuple, coerce_tuples, unconditional_forward_check


@dataclass(frozen=True)
class BasicUNetConfig:
    in_channels: int = 1
    out_channels: int = 1
    image_size: int = 16
    num_classes: int = 0
    channels: tuple[int, ...] = (32, 64, 64)
    kernel_size: int = 5

    def __post_init__(self) -> None:
        coerce_tuples(self)
        self.validate()

    def validate(self) -> None:
        check_tuple("basic", "channels", self.channels)
        check_common(self, "basic", len(self.channels) - 1, conditional=False)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(
                f"kernel_size must be an odd integer >= 1 so convs keep the image size, got "
                f"{self.kernel_size} ('basic' config)"
            )


class BasicUNet(nn.Module):
    def __init__(self, config: BasicUNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        k, chans = config.kernel_size, config.channels

        def conv(a: int, b: int) -> nn.Conv2d:
            return nn.Conv2d(a, b, k, padding=k // 2)

        downs = [config.in_channels, *chans]
        self.down_layers = nn.ModuleList(
            conv(a, b) for a, b in zip(downs[:-1], downs[1:], strict=True)
        )
        # Up convs mirror the down convs: (64->64, 64->32, 32->out) for the default.
        ups = [chans[-1], *reversed(chans[:-1]), config.out_channels]
        self.up_layers = nn.ModuleList(conv(a, b) for a, b in zip(ups[:-1], ups[1:], strict=True))
        self.act = nn.SiLU()
        self.pool = nn.MaxPool2d(2)
        self.upscale = nn.Upsample(scale_factor=2.0, mode="nearest")

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        unconditional_forward_check("basic", y)
        n = len(self.down_layers)
        skips = []
        for i, layer in enumerate(self.down_layers):
            x = self.act(layer(x))
            if i < n - 1:
                skips.append(x)
                x = self.pool(x)
        for i, layer in enumerate(self.up_layers):
            if i > 0:
                x = self.upscale(x) + skips.pop()
            x = layer(x)
            if i < n - 1:
                x = self.act(x)
        # The net ignores t, but an exported graph must still declare it as an input (the
        # runtime always feeds one); a zero-weighted use keeps the tracer from pruning it.
        return x + 0.0 * t.float()[:, None, None, None]
