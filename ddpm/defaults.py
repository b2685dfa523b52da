"""One set of defaults for the API (``Sampler.sample``) and the CLI (``ddpm-run``).

numpy-free and import-free, so ``--help`` can show them instantly.
"""

from __future__ import annotations

N = 16
STEPS = 50
SAMPLER = "ddpm"
ETA = 0.0
SEED = 0
#: Samples per model call when batch_size is None (guidance doubles the model batch).
BATCH_SIZE = 64
#: Classifier-free guidance scale for class-conditional models; unconditional models have
#: no guidance (1.0 means the plain model output).
GUIDANCE_CONDITIONAL = 3.0
GUIDANCE_UNCONDITIONAL = 1.0
#: Default grid upscaling: the smallest whole factor making the grid's longer side at
#: least this many pixels (nearest neighbour, so pixels stay crisp), at most MAX_SCALE.
GRID_MIN_PIXELS = 512
MAX_SCALE = 16
#: Samples shown in the trajectory strip by default.
TRAJECTORY_SAMPLES = 4


def guidance_for(conditional: bool) -> float:
    """The guidance scale used when none is given."""
    return GUIDANCE_CONDITIONAL if conditional else GUIDANCE_UNCONDITIONAL


def grid_scale(height: int, width: int) -> int:
    """Upscale factor for a grid of ``height`` x ``width`` pixels (see GRID_MIN_PIXELS)."""
    longer = max(1, height, width)
    return max(1, min(MAX_SCALE, -(-GRID_MIN_PIXELS // longer)))
