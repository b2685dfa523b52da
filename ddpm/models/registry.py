"""Model presets by name: one registry mapping arch -> (config dataclass, nn.Module class).

Every preset's module is built as ``cls(config)`` and called as ``model(x, t, y=None)`` with
x (B, C, H, W) float, t (B,) int64 timesteps and y (B,) int64 class labels (or None);
it returns the prediction, shape (B, out_channels, H, W). Configs are dataclasses that
round-trip through JSON via ``to_dict`` / ``config_from_dict``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from ddpm.errors import ConfigError

#: Built-in presets: arch -> (module, config class, nn.Module class). Named, not imported:
#: the preset modules import nothing from here, so the registry sits above them with no circle.
PRESETS: dict[str, tuple[str, str, str]] = {
    "basic": ("ddpm.models.basic", "BasicUNetConfig", "BasicUNet"),
    "cond": ("ddpm.models.cond", "CondUNetConfig", "CondUNet"),
    "ddpm": ("ddpm.models.ddpm_unet", "DDPMUNetConfig", "DDPMUNet"),
    "doubleconv": ("ddpm.models.doubleconv", "DoubleConvUNetConfig", "DoubleConvUNet"),
    "unet2d": ("ddpm.models.unet2d", "UNet2DConfig", "UNet2D"),
    "wang": ("ddpm.models.wang", "WangUNetConfig", "WangUNet"),
}
#: Presets registered at run time by user code (``register``), checked after PRESETS.
_EXTRA: dict[str, tuple[type, type]] = {}


def register(arch: str, config_cls: type):
    """Class decorator for a user preset: ``@register("mine", MyConfig)`` on the nn.Module."""

    def deco(model_cls: type) -> type:
        _EXTRA[arch] = (config_cls, model_cls)
        return model_cls

    return deco


def archs() -> list[str]:
    return sorted({*PRESETS, *_EXTRA})


def _lookup(arch: str) -> tuple[type, type]:
    if arch in PRESETS:
        module, config_name, model_name = PRESETS[arch]
        mod = importlib.import_module(module)
        return getattr(mod, config_name), getattr(mod, model_name)
    if arch in _EXTRA:
        return _EXTRA[arch]
    raise ConfigError(f"unknown arch {arch!r}; expected one of {', '.join(archs())}")


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
