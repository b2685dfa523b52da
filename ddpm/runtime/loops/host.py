"""The host loop: numpy noise and update between engine calls, same for every engine.

DDPM (Ho et al. 2020, Alg. 2) and DDIM (Song et al. 2021, eq. 12): draw x_T, then for each
row i of the :class:`ddpm.schedule.StepTable` call the network (conditional and
unconditional halves as one batch of 2B under guidance) and apply
:func:`ddpm.schedule.step` with the counter-based noise of :mod:`ddpm.noise`. Noise is
keyed by (seed, step, offset) with offset = global sample index * elements per sample, so
splitting a request into batches of any size never changes an image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np

from ddpm.errors import NonFiniteError
from ddpm.noise import initial_noise, randn
from ddpm.runtime.engines.base import Engine, HoldsSessions, RunFn
from ddpm.runtime.loops.guidance import combine, uses_cfg
from ddpm.runtime.plan import Plan
from ddpm.schedule import step

#: (x_0 batch, [x_t per step], [x̂0 per step]) of one batch.
BatchResult = tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]
#: Called before every step; raises to stop the loop (cancellation, deadline).
Check = Callable[[], None]


def guided(run: RunFn, x: np.ndarray, t: np.ndarray, y: np.ndarray | None, plan: Plan) -> np.ndarray:
    """Network output with classifier-free guidance: cond and null halves in one call."""
    if not uses_cfg(y, plan.guidance):
        return run(x, t, y)
    b = x.shape[0]
    null = np.full_like(y, plan.null_label)
    out = run(np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([y, null]))
    return combine(out[:b], out[b:], plan.guidance)  # (B, C, H, W)


def all_finite(x: np.ndarray) -> bool:
    """Whether ``x`` holds no NaN/Inf: the per-step check (one vectorised pass over x)."""
    return bool(np.isfinite(x).all())


def non_finite(i: int, steps: int, t: int, out: np.ndarray) -> NonFiniteError:
    """The error for a step whose x_{t-1} holds NaN/Inf (``out``: that step's model output)."""
    where = "the model output" if not np.isfinite(out).all() else "the update of a finite model output"
    return NonFiniteError(
        f"sampling step {i + 1} of {steps} (t={t}): {where} holds NaN or Inf, so every image "
        "would be garbage and none was written; the model's weights are broken (re-export or "
        "retrain it, e.g. with a lower --lr) or its schedule is invalid"
    )


def finite_batch(x: np.ndarray, steps: int, loop: str) -> np.ndarray:
    """``x`` (a batch's final samples) if it holds no NaN/Inf, else NonFiniteError.

    The per-batch check of the loops that keep x on the device (``loop="device"``, the Triton
    update), where a per-step host check would cost a copy per step; NaN/Inf propagate
    through every later step (clipping keeps NaN), so the final batch shows them.
    """
    if all_finite(x):
        return x
    raise NonFiniteError(
        f"the {loop} loop's {steps}-step samples hold NaN or Inf, so every image would be "
        "garbage and none was written; the model's weights are broken (re-export or retrain "
        "it, e.g. with a lower --lr); loop='host' names the first bad step"
    )


def hold(engine: Engine, batch: int) -> contextlib.AbstractContextManager[RunFn]:
    """The engine's run function for model batches of ``batch``, resources held if it can."""
    if isinstance(engine, HoldsSessions):
        return engine.hold(batch)
    return contextlib.nullcontext(engine.run)


def run_batch(
    run: RunFn,
    plan: Plan,
    image_shape: tuple[int, int, int],
    start: int,
    stop: int,
    *,
    record: bool,
    tick: Callable[[], None],
    check: Check | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    finite_check: bool = True,
) -> BatchResult:
    """Sample [start, stop) of ``plan`` with ``run``; ``check()`` runs before every step.

    x_T is ``table.init_noise`` ("gaussian", or "uniform" on ``value_range`` for mix).
    ``finite_check``: raise NonFiniteError at the first step whose x_{t-1} holds NaN/Inf
    (one pass over x per step; benchmarks/bench_nan_check.py measures its cost).
    """
    table = plan.table
    shape = (stop - start, *image_shape)  # (B, C, H, W)
    offset = start * math.prod(image_shape)  # global element index of this batch's first sample
    x = initial_noise(table.init_noise, shape, seed=plan.seed, offset=offset, value_range=value_range)
    y = None if plan.labels is None else plan.labels[start:stop]
    xts: list[np.ndarray] = []
    x0s: list[np.ndarray] = []
    x0 = None  # previous step's x̂0: the extra state of multistep samplers
    for i, t in enumerate(table.timesteps):
        if check is not None:
            check()
        tt = np.full(shape[0], t, dtype=np.int64)
        out = guided(run, x, tt, y, plan)
        z = randn(shape, seed=plan.seed, step=i, offset=offset) if table.sigma[i] != 0 else None
        x_prev, x0 = step(table, i, out, x, z, prev_x0=x0)
        # A NaN/Inf anywhere in the model output or the update reaches x_prev: one check
        # per step catches both before garbage images are written.
        if finite_check and not all_finite(x_prev):
            raise non_finite(i, len(table), int(t), out)
        if record:
            xts.append(x)
            x0s.append(x0)
        x = x_prev
        tick()
    return x, xts, x0s


class HostLoop:
    """Runs each batch of a plan on the host, holding the engine's sessions per batch."""

    name = "host"
    #: Check x_{t-1} for NaN/Inf every step (see :func:`run_batch`); off only to measure it.
    finite_check = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(
        self, plan: Plan, start: int, stop: int, *, record: bool, tick: Callable[[], None],
        check: Check | None = None,
    ) -> BatchResult:
        b = stop - start
        model_batch = 2 * b if uses_cfg(plan.labels, plan.guidance) else b
        with hold(self.engine, model_batch) as run:
            return run_batch(
                run, plan, self.engine.contract.image_shape, start, stop,
                record=record, tick=tick, check=check, value_range=self.engine.contract.value_range,
                finite_check=self.finite_check,
            )
