"""A sampling request, validated in full before the first model call.

:func:`make_plan` turns the user's arguments into a frozen :class:`Plan` -- the step table,
the per-sample labels, the batch split -- or raises a one-line :class:`ddpm.errors.ConfigError`
naming the bad value and the fix. Nothing here touches a model, so the CLI can reject every
bad input before any work (and any output) happens.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ddpm.artifact import Contract
from ddpm.errors import ConfigError
from ddpm.noise import SEED_MAX
from ddpm.schedule import SAMPLERS, StepTable, step_table

#: Default samples per model call when batch_size is None (CFG doubles the model batch).
DEFAULT_BATCH = 64


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
        """[start, stop) sample ranges; noise offsets use the global start, see sampler.py."""
        return [(s, min(s + self.batch_size, self.n)) for s in range(0, self.n, self.batch_size)]


def _int(name: str, value: object, lo: int, hi: int | None, fix: str) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be an integer {rng}, got {value!r}; {fix}")
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
                "drop --label"
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
                f"labels must be one integer or {n} integers (one per sample), got {labels!r}"
            )
        arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr > k)]
    if bad.size:
        raise ConfigError(
            f"label {int(bad[0])} is out of range: this model has {k} classes; "
            f"pass --label in 0..{k - 1} (or {k}, the null label, for unconditional samples)"
        )
    return arr


def make_plan(
    contract: Contract,
    n: int,
    *,
    steps: int = 50,
    sampler: str = "ddpm",
    eta: float = 0.0,
    seed: int = 0,
    labels: int | Sequence[int] | None = None,
    guidance: float = 1.0,
    batch_size: int | None = None,
) -> Plan:
    """Validate a request against the model's contract; raise ConfigError on the first problem."""
    n = _int("number of samples", n, 1, None, "pass -n 1 or more")
    T = contract.schedule_config.num_train_timesteps
    steps = _int("steps", steps, 1, T, f"the model was trained with T={T}: pass --steps in 1..{T}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; pass --sampler {' or '.join(SAMPLERS)}")
    if not isinstance(eta, numbers.Real) or not float(eta) >= 0.0:
        raise ConfigError(f"eta must be a number >= 0, got {eta!r}; pass --eta 0 (DDIM) .. 1 (DDPM-like)")
    if sampler == "ddpm" and float(eta) != 0.0:
        raise ConfigError(f"eta={eta} applies only to --sampler ddim; drop --eta or use ddim")
    seed = _int("seed", seed, 0, SEED_MAX, f"pass --seed in 0..{SEED_MAX}")
    if not isinstance(guidance, numbers.Real) or not np.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if not contract.conditional and float(guidance) != 1.0:
        raise ConfigError(
            f"guidance {guidance} needs a class-conditional model, but this one is "
            "unconditional; drop --guidance"
        )
    bs = DEFAULT_BATCH if batch_size is None else batch_size
    bs = min(_int("batch size", bs, 1, None, "pass --batch-size 1 or more"), n)
    return Plan(
        n=n,
        table=step_table(contract.schedule_config, steps, sampler=sampler, eta=float(eta)),
        seed=seed,
        labels=resolve_labels(contract, n, labels),
        guidance=float(guidance),
        batch_size=bs,
        null_label=contract.null_label,
    )
