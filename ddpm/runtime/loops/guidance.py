"""When a request runs classifier-free guidance; the formula itself is
:func:`ddpm.schedule.guide`, re-exported here as ``combine`` for the loops."""

from __future__ import annotations

from typing import Any

from ddpm.schedule import guide as combine

__all__ = ["combine", "uses_cfg"]


def uses_cfg(labels: Any, guidance: float) -> bool:
    """Whether a request runs the unconditional half: labels given and w != 1 (w == 1 is
    exactly the conditional output, so that half is skipped)."""
    return labels is not None and float(guidance) != 1.0
