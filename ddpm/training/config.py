"""Training options as one dataclass, validated up front, stored in the checkpoint.

On ``--resume`` the options that define the run (data, model, schedule, optimizer, seed)
come from the checkpoint, so the continued run is the one that was started; only the
options in :data:`RUN_OPTIONS` (where to write, how long, how often) may change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ddpm.errors import ConfigError
from ddpm.schedule import ScheduleConfig

#: Options a resumed run may change; every other option is taken from the checkpoint.
RUN_OPTIONS = frozenset(
    {"out", "steps", "sample_every", "save_every", "data_root", "download", "device"}
)


@dataclass
class TrainConfig:
    """Everything ``ddpm-train`` needs; field names match the CLI's long options."""

    out: str = "runs/digits"
    dataset: str = "digits"
    arch: str = "ddpm"
    image_size: int = 16
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    prediction_type: str = "epsilon"
    objective: str = "diffusion"  # or "corrupt": seeds/001's uniform-noise blend (sample head)
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    conditional: bool = False
    label_dropout: float = 0.1
    sample_every: int = 500
    save_every: int = 1000
    num_samples: int = 16
    sample_steps: int = 50
    bf16: bool = False
    data_root: str = "data"
    download: bool = False
    device: str = "auto"
    model_config: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # ckpt.pt whose EMA weights start a fine-tuning run

    def schedule(self) -> ScheduleConfig:
        """The noise schedule (raises ConfigError for an unknown schedule/prediction type)."""
        return ScheduleConfig(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            objective=self.objective,
        )

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option and a value that works."""
        check_numbers(self)  # types and ddpm.limits bounds first: nothing allocated yet
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}"),
            (self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 disables), got {self.grad_clip}"),
            (0 <= self.label_dropout < 1,
             f"--label-dropout must be in [0, 1), got {self.label_dropout}"),
            (self.sample_every >= 0, f"--sample-every must be >= 0, got {self.sample_every}"),
            (self.save_every >= 0, f"--save-every must be >= 0, got {self.save_every}"),
            (self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}"),
            (self.sample_steps >= 1, f"--sample-steps must be >= 1, got {self.sample_steps}"),
            (self.image_size >= 1, f"--image-size must be >= 1, got {self.image_size}"),
            (0 <= self.seed < 2**63, f"--seed must be in [0, 2**63), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if not isinstance(self.model_config, dict):
            raise ConfigError(
                "--model-config must be a JSON object, e.g. '{\"base_channels\": 32}'"
            )
        self.schedule()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        # Unknown keys come from a newer ddpm; ignore them rather than refuse the checkpoint.
        return cls(**{k: v for k, v in d.items() if k in known})


def resume_config(
    stored: dict[str, Any], given: TrainConfig, explicit: Collection[str]
) -> TrainConfig:
    """The config of a resumed run: the checkpoint's ``train_args`` plus run options.

    ``explicit`` names the options the user set on the command line. Setting one that
    defines the run to a value other than the stored one is an error, not a silent change.
    """
    base = TrainConfig.from_dict(dict(stored))
    updates = {}
    for name in explicit:
        value = getattr(given, name)
        if name in RUN_OPTIONS:
            updates[name] = value
        elif value != getattr(base, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {value!r} differs from the checkpoint's {getattr(base, name)!r}; "
                f"drop {flag} when resuming (or start a fresh run without --resume)"
            )
    return dataclasses.replace(base, **updates)


def check_numbers(config: TrainConfig) -> None:
    """Integers are integers within ``ddpm.limits`` and floats are finite numbers, so
    ``--batch-size 1000000000`` or a string in a resumed checkpoint's ``train_args`` fails in
    one line before any data is loaded or model is built."""
    import math

    from ddpm import limits

    for name, bound, minimum in (
        ("steps", "STEPS", 1), ("batch_size", "BATCH_SIZE", 1),
        ("num_samples", "NUM_SAMPLES", 1), ("sample_steps", "SAMPLE_STEPS", 1),
        ("image_size", "IMAGE_SIZE", 1), ("num_train_timesteps", "TIMESTEPS", 1),
        ("warmup", "STEPS", 0), ("sample_every", "STEPS", 0), ("save_every", "STEPS", 0),
    ):
        limits.check_int("--" + name.replace("_", "-"), getattr(config, name), bound,
                         minimum=minimum)
    for name in ("lr", "weight_decay", "ema_decay", "grad_clip", "label_dropout"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value
        ):
            raise ConfigError(
                f"--{name.replace('_', '-')} must be a finite number, got {value!r}"
            )
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ConfigError(f"--seed must be an integer, got {config.seed!r}")
