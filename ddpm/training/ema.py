"""Exponential moving average of model weights (Polyak averaging).

Ho et al. 2020 (DDPM, appendix B) sample from an EMA of the weights with decay 0.9999; on
short runs that average is dominated by the random init, so the effective decay ramps up as
min(decay, (1 + n) / (10 + n)) (the warm-up used by TensorFlow's ExponentialMovingAverage).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``self.model``, a frozen copy of a module whose weights trail the live ones."""

    def __init__(self, model: nn.Module, *, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            from ddpm.errors import ConfigError

            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}; pass --ema-decay 0.999")
        self.decay = float(decay)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for ep, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ep.lerp_(p.detach(), 1.0 - d)  # ema += (1 - d) * (p - ema)
        # Buffers (e.g. normalization statistics) are copied, not averaged.
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict, num_updates: int) -> None:
        self.model.load_state_dict(state, strict=True)
        self.num_updates = int(num_updates)
