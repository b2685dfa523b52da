"""UNet presets (torch). ``build(arch, config)`` is the entry point; see registry.py."""

from ddpm.models.registry import archs, build, config_from_dict, config_to_dict, register

__all__ = ["archs", "build", "config_from_dict", "config_to_dict", "register"]
