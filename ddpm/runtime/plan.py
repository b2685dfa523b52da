"""A sampling request, validated in full before the first model call.

:func:`make_plan` turns the caller's arguments into a frozen :class:`Plan` -- the step
table, the per-sample labels, the batch split -- or raises a one-line
:class:`ddpm.errors.ConfigError` whose ``field`` names the argument at fault. Arguments left
None take :mod:`ddpm.defaults`. Nothing here touches a model, so the CLI can reject every
bad input before any work (and any output) happens. Messages use the API's argument names;
``ddpm-run`` prefixes its flag.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddpm import defaults, limits
from ddpm.artifact import Contract
from ddpm.errors import ConfigError
from ddpm.noise import SEED_MAX
from ddpm.schedule import SAMPLERS, StepTable, step_table

#: The request keywords make_plan accepts (those of Sampler.sample that shape the images).
REQUEST_KEYS = ("steps", "sampler", "eta", "seed", "labels", "guidance", "batch_size")


@dataclass(frozen=True)
class Plan:
    """Everything one ``Sampler.sample`` call needs; immutable, so calls share nothing."""

    n: int
    table: StepTable
    seed: int
    labels: np.ndarray | None  # int64 (n,), or None for an unconditional model
    guidance: float
    batch_size: int
    null_label: int | None

    @property
    def steps(self) -> int:
        return len(self.table)

    def batches(self) -> list[tuple[int, int]]:
        """[start, stop) sample ranges; noise offsets use the global start (loops/host.py)."""
        return [(s, min(s + self.batch_size, self.n)) for s in range(0, self.n, self.batch_size)]


def check_int(
    name: str, value: object, lo: int, hi: int | None = None, why: str = "", *, bound: str | None = None
) -> int:
    """``value`` as an int in lo..hi (hi None: unbounded), else ConfigError with ``field=name``.

    ``bound`` names a :mod:`ddpm.limits` entry checked as well (its message says how to
    raise it), so a size that would be allocated (``n``, ``batch_size``) is refused first.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be an integer {rng}, got {value!r}{why}", field=name)
    if bound is not None:
        limits.check_int(name, int(value), bound, minimum=lo, field=name)
    return int(value)


def resolve_labels(contract: Contract, n: int, labels: int | Sequence[int] | None) -> np.ndarray | None:
    """Per-sample int64 labels; None on a conditional model cycles 0..K-1 over the samples.

    Label K (the contract's null label) asks a conditional model for unconditional samples.
    """
    k = contract.num_classes
    if not contract.conditional:
        if labels is not None:
            raise ConfigError(
                f"the model is unconditional (num_classes=0) but labels {labels!r} were given; "
                "pass no labels", field="labels",
            )
        return None
    if labels is None:
        return np.arange(n, dtype=np.int64) % k
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        arr = np.full(n, int(labels), dtype=np.int64)
    else:
        try:
            arr = np.asarray(labels)
        except (TypeError, ValueError):
            arr = np.asarray([None])
        if arr.ndim != 1 or arr.shape[0] != n or arr.dtype.kind not in "iu":
            raise ConfigError(
                f"labels must be one integer or {n} integers (one per sample), got {labels!r}",
                field="labels",
            )
        arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr > k)]
    if bad.size:
        raise ConfigError(
            f"label {int(bad[0])} is out of range: this model has {k} classes; "
            f"use labels in 0..{k - 1} (or {k}, the null label, for unconditional samples)",
            field="labels",
        )
    return arr


def _guidance(contract: Contract, guidance: object, labels: np.ndarray | None) -> float:
    if guidance is None:
        guidance = defaults.guidance_for(contract.conditional)
    if not isinstance(guidance, numbers.Real) or not np.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"guidance must be a finite number >= 0, got {guidance!r}", field="guidance")
    if not contract.conditional and float(guidance) != 1.0:
        raise ConfigError(
            f"guidance {guidance} needs a class-conditional model, but this one is "
            "unconditional; pass no guidance (or 1)", field="guidance",
        )
    if labels is not None and bool((labels == contract.null_label).all()):
        return 1.0  # every half is unconditional: out_u + w * (out_u - out_u) is out_u
    return float(guidance)


def make_plan(contract: Contract, n: int | None = None, **request: Any) -> Plan:
    """Validate a request against the model's contract; raise ConfigError on the first problem.

    ``request`` takes the keywords of :data:`REQUEST_KEYS`; None (or absent) means the default.
    """
    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown sampling argument {unknown[0]!r}; expected one of {', '.join(REQUEST_KEYS)}",
            field=unknown[0],
        )
    r = {k: request.get(k) for k in REQUEST_KEYS}
    # Bounded before anything sized by n (labels, noise, the result) is allocated.
    n = check_int("n", defaults.N if n is None else n, 1, bound="NUM_SAMPLES")
    limits.check_elements("the samples of n images", (n, *contract.image_shape), field="n")
    T = contract.schedule_config.num_train_timesteps
    steps = check_int("steps", defaults.STEPS if r["steps"] is None else r["steps"], 1, T,
                      f" (the model was trained with T={T})")
    sampler = defaults.SAMPLER if r["sampler"] is None else r["sampler"]
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; expected {' or '.join(SAMPLERS)}", field="sampler")
    eta = defaults.ETA if r["eta"] is None else r["eta"]
    # DDIM's eta interpolates 0 (deterministic) .. 1 (DDPM's variance); beyond 1 sigma
    # exceeds the remaining noise and the update takes the square root of a negative number.
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= float(eta) <= 1.0:
        raise ConfigError(
            f"eta must be a number in 0..1 (0 deterministic DDIM, 1 DDPM-like), got {eta!r}", field="eta"
        )
    if sampler == "ddpm" and float(eta) != 0.0:
        raise ConfigError(f"eta={eta} applies only to sampler 'ddim'; use eta 0 or sampler 'ddim'", field="eta")
    seed = check_int("seed", defaults.SEED if r["seed"] is None else r["seed"], 0, SEED_MAX)
    labels = resolve_labels(contract, n, r["labels"])
    guidance = _guidance(contract, r["guidance"], labels)
    bs = defaults.BATCH_SIZE if r["batch_size"] is None else r["batch_size"]
    bs = min(check_int("batch_size", bs, 1, bound="BATCH_SIZE"), n)
    return Plan(
        n=n,
        table=step_table(contract.schedule_config, steps, sampler=sampler, eta=float(eta)),
        seed=seed,
        labels=labels,
        guidance=guidance,
        batch_size=bs,
        null_label=contract.null_label,
    )
