"""Checks of ``export_checkpoint``'s arguments, made before minutes of export start.

Those that need no checkpoint (``atol``, ``step_count``'s range, the sampler's name) run
before it is read; those that need its schedule (the objective a sampler needs, T) right
after; a folder where an output file goes, before the first graph is traced. Messages name
the ``ddpm-export`` flag, since the CLI passes its flags straight through.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

from ddpm import limits
from ddpm._io import output_error
from ddpm.errors import ConfigError
from ddpm.export.sources import LoadedModel

DEFAULT_ATOL = 1e-4


def check_atol(atol: object) -> float:
    """``atol`` as a finite float > 0: NaN would make every parity check pass."""
    if isinstance(atol, bool) or not isinstance(atol, (int, float)):
        raise ConfigError(f"--atol must be a number, got {atol!r}; pass e.g. --atol {DEFAULT_ATOL}",
                          field="atol")
    if not math.isfinite(atol) or atol <= 0:
        raise ConfigError(
            f"--atol must be a finite number > 0, got {atol}; pass e.g. --atol {DEFAULT_ATOL}",
            field="atol",
        )
    return float(atol)


def check_step_args(sampler: str | None, steps: object) -> None:
    """--step-sampler / --step-count checks that need no checkpoint (range, known name)."""
    from ddpm.schedule import SAMPLERS

    limits.check_int("--step-count", steps, "SAMPLE_STEPS", field="step_count")
    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(
            f"--step-sampler {sampler!r} is unknown; pass one of {', '.join(SAMPLERS)}",
            field="step_sampler",
        )


def step_sampler_for(loaded: LoadedModel, sampler: str | None, steps: int) -> str:
    """The sampler --with-step is validated on: ``sampler`` if the model's objective allows
    it, else the first that does; --step-count within the schedule's T."""
    from ddpm.schedule import SAMPLER_OBJECTIVE, SAMPLERS

    sched = loaded.schedule
    fits = [s for s in SAMPLERS if SAMPLER_OBJECTIVE[s] == sched.objective]
    if sampler is not None and sampler not in fits:
        raise ConfigError(
            f"--step-sampler {sampler!r} needs a model trained with objective "
            f"{SAMPLER_OBJECTIVE[sampler]!r}, but this one was trained with {sched.objective!r}; "
            f"pass --step-sampler {' or '.join(fits)}",
            field="step_sampler",
        )
    if steps > sched.num_train_timesteps:
        raise ConfigError(
            f"--step-count {steps} is above the model's {sched.num_train_timesteps} training "
            f"timesteps; pass --step-count {min(50, sched.num_train_timesteps)}",
            field="step_count",
        )
    if sched.thresholding:
        raise ConfigError(
            "--with-step: this model's schedule uses dynamic thresholding (a per-sample "
            "quantile of x0), which has no step-graph form; export without --with-step "
            "(ddpm-run samples it with the host loop)",
            field="with_step",
        )
    return sampler or fits[0]


def refuse_folders(out: Path, names: list[str]) -> None:
    """A folder where an output file goes fails the export before anything is written."""
    for name in names:
        final = out / name
        if final.is_dir():
            raise output_error(final, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)),
                               what="exported model", note="nothing was written")
