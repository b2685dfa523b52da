"""Model presets by name: one registry mapping arch -> (config dataclass, nn.Module class).

Every preset's module is built as ``cls(config)`` and called as ``model(x, t, y=None)`` with
x (B, C, H, W) float, t (B,) int64 timesteps and y (B,) int64 class labels (or None);
it returns the prediction, shape (B, out_channels, H, W). Configs are dataclasses that
round-trip through JSON via ``to_dict`` / ``config_from_dict``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ddpm.errors import ConfigError

_REGISTRY: dict[str, tuple[type, type]] = {}


def register(arch: str, config_cls: type):
    """Class decorator: ``@register("ddpm", DDPMUNetConfig)`` on the nn.Module."""

    def deco(model_cls: type) -> type:
        _REGISTRY[arch] = (config_cls, model_cls)
        return model_cls

    return deco


def _load_presets() -> None:
    # Importing the preset modules runs their @register decorators.
    from ddpm.models import basic, cond, ddpm_unet, doubleconv, unet2d, wang  # noqa: F401


def archs() -> list[str]:
    _load_presets()
    return sorted(_REGISTRY)


def _lookup(arch: str) -> tuple[type, type]:
    _load_presets()
    if arch not in _REGISTRY:
        raise ConfigError(f"unknown arch {arch!r}; expected one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[arch]


def config_from_dict(arch: str, d: dict[str, Any]):
    """Rebuild a preset's config dataclass from its JSON dict (unknown keys are an error)."""
    config_cls, _ = _lookup(arch)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {sorted(unknown)} for arch {arch!r}; "
            f"expected a subset of {sorted(known)}"
        )
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return config_cls(**fields)


def config_to_dict(config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def build(arch: str, config=None, **overrides):
    """Build preset ``arch`` from a config dataclass, a dict, or defaults plus overrides."""
    config_cls, model_cls = _lookup(arch)
    if config is None:
        config = config_cls(**overrides)
    elif isinstance(config, dict):
        config = config_from_dict(arch, {**config, **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return model_cls(config)
