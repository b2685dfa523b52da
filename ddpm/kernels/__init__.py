"""Fused per-step sampler kernels (Triton) and their torch references.

Importing ``ddpm.kernels`` imports neither torch nor triton: the submodules load on first
attribute access (PEP 562), so the ONNX Runtime path can import this package freely.

- :mod:`ddpm.kernels.reference` -- torch reference of :func:`ddpm.schedule.step`.
- :mod:`ddpm.kernels.fused` -- the Triton kernel and its launch wrapper ``fused_step``.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("reference", "fused")
#: Public functions re-exported lazily: name -> submodule.
_EXPORTS = {"fused_step": "fused", "reference_step": "reference"}

__all__ = [*_SUBMODULES, *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, "step" if name == "reference_step" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
