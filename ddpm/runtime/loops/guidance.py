"""Classifier-free guidance (Ho & Salimans 2022, eq. 6): the one definition every path uses.

numpy only, so the step-graph builder and the kernel references can call it on their own
array types (torch tensors work too: only ``+``, ``-`` and ``*`` are used).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def uses_cfg(labels: Any, guidance: float) -> bool:
    """Whether a request runs the unconditional half: labels given and w != 1 (w == 1 is
    exactly the conditional output, so that half is skipped)."""
    return labels is not None and float(guidance) != 1.0


def combine(out_c: Any, out_u: Any, guidance: float) -> Any:
    """out_u + w * (out_c - out_u); a numpy result stays float32."""
    w = np.float32(guidance) if isinstance(out_u, np.ndarray) else float(guidance)
    return out_u + w * (out_c - out_u)
