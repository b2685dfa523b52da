"""Documented upper bounds, checked before anything is allocated.

A hostile or careless input (``base_channels`` 200000, ``num_train_timesteps`` 1e12, an
image size of 100000, ``--batch-size`` 1e9) must fail in milliseconds with a one-line
error instead of swapping or being killed. These bounds are far above any model this toolkit
trains or samples on one machine; users with larger models raise them:

- ``DDPM_LIMITS=relaxed`` multiplies every bound by 1000.
- ``DDPM_MAX_<NAME>=N`` sets one bound, e.g. ``DDPM_MAX_IMAGE_SIZE=4096``.

Both are read at each check, so a test or a long-lived service may change them at run time.
Imports nothing but the stdlib and :mod:`ddpm.errors`.
"""

from __future__ import annotations

import os

from ddpm.errors import ConfigError

#: name -> (default bound, what it bounds). Names are the ``DDPM_MAX_<NAME>`` suffixes.
DEFAULTS: dict[str, tuple[int, str]] = {
    "IMAGE_SIZE": (1024, "image height / width in pixels"),
    "IMAGE_CHANNELS": (16, "image channels (in_channels, out_channels)"),
    "CHANNELS": (4096, "channels of any layer (base_channels x mult, channel lists, dims)"),
    "MULT": (64, "one channel multiplier"),
    "LEVELS": (12, "resolution levels (entries in a channel / multiplier list)"),
    "BLOCKS": (64, "residual blocks per level, attention heads, kernel size"),
    "NUM_CLASSES": (100_000, "class labels of a conditional model"),
    "TIMESTEPS": (100_000, "training timesteps T"),
    "BATCH_SIZE": (65_536, "images per batch"),
    "NUM_SAMPLES": (65_536, "images per run or sample grid"),
    "STEPS": (100_000_000, "optimizer steps of a training run"),
    "SAMPLE_STEPS": (100_000, "inference steps"),
    "CHECKPOINT_BYTES": (16 << 30, "bytes of a checkpoint once decompressed"),
    # 2**28 float32 elements = 1 GiB: one input batch never needs more on one machine.
    "ELEMENTS": (1 << 28, "elements of one image batch (batch x channels x height x width)"),
}

RELAXED_FACTOR = 1000
ENV_MODE = "DDPM_LIMITS"
ENV_PREFIX = "DDPM_MAX_"


def limit(name: str) -> int:
    """The current bound ``name`` (a key of :data:`DEFAULTS`), after the env overrides."""
    default, _ = DEFAULTS[name]
    raw = os.environ.get(ENV_PREFIX + name)
    if raw:
        try:
            value = int(float(raw))
        except ValueError:
            raise ConfigError(
                f"{ENV_PREFIX}{name}={raw!r} is not a number; set it to an integer such as "
                f"{default * 10}"
            ) from None
        if value < 1:
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} must be >= 1")
        return value
    mode = os.environ.get(ENV_MODE, "").strip().lower()
    if mode in ("", "default"):
        return default
    if mode == "relaxed":
        return default * RELAXED_FACTOR
    raise ConfigError(f"{ENV_MODE}={mode!r} is unknown; use 'relaxed' or unset it")


def how_to_raise(name: str) -> str:
    return f"set {ENV_PREFIX}{name}=N or {ENV_MODE}=relaxed to allow more"


def check_int(
    what: str, value: object, name: str, *, minimum: int = 1, field: str | None = None
) -> int:
    """``value`` as an int in ``[minimum, limit(name)]``, else ConfigError naming ``what``.

    Bools and floats with a fraction are refused; ``1e3`` (a float equal to an int) is not,
    because JSON and YAML writers produce those.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{what} must be an integer, got {value!r} ({type(value).__name__}); "
            f"pass a whole number such as {max(minimum, 1)}",
            field=field,
        )
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            raise ConfigError(
                f"{what} must be an integer, got {value!r}; pass a whole number", field=field
            )
        value = int(value)
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}", field=field)
    bound = limit(name)
    if value > bound:
        raise ConfigError(
            f"{what} {value} is above the limit {bound} ({DEFAULTS[name][1]}); use a smaller "
            f"value or {how_to_raise(name)}",
            field=field,
        )
    return value


def check_elements(what: str, shape: tuple[int, ...], *, field: str | None = None) -> None:
    """Refuse a tensor shape whose element count would exceed ``limit('ELEMENTS')``."""
    count = 1
    for d in shape:
        count *= int(d)
    bound = limit("ELEMENTS")
    if count > bound:
        raise ConfigError(
            f"{what} of shape {tuple(shape)} has {count} elements, above the limit {bound}; "
            f"use a smaller batch or image size, or {how_to_raise('ELEMENTS')}",
            field=field,
        )


def table() -> str:
    """Markdown table of the bounds and their current values (for docs and --help)."""
    rows = ["| name | default | bounds |", "|---|---|---|"]
    rows += [f"| `{ENV_PREFIX}{k}` | {v} | {d} |" for k, (v, d) in DEFAULTS.items()]
    return "\n".join(rows)


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_types(
    mapping: dict, spec: dict[str, tuple[type, ...]], where: str, error: type[Exception],
    fix: str, *, required: bool = False,
) -> None:
    """Each ``spec`` key present in ``mapping`` has one of its types (bool is not an int).

    Raises ``error`` naming the key, the type found, the type expected and ``fix``, so a
    string where an int belongs fails here in one line, not as a TypeError deep inside.
    """
    for key, types in spec.items():
        if key not in mapping:
            if required:
                raise error(f"{where} lacks {key!r}; {fix}")
            continue
        value = mapping[key]
        is_bool = isinstance(value, bool)
        ok = isinstance(value, types) and (not is_bool or bool in types)
        if not ok:
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            shown = "" if value is None else " " + repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise error(
                f"{where}: {key!r} must be {expected}, got {type_name(value)}{shown}; {fix}"
            )


#: ScheduleConfig field -> allowed types (the fields of ``ddpm.schedule.ScheduleConfig``).
SCHEDULE_TYPES: dict[str, tuple[type, ...]] = {
    "num_train_timesteps": (int,), "beta_start": (float, int), "beta_end": (float, int),
    "clip_sample_range": (float, int), "steps_offset": (int,),
    "dynamic_thresholding_ratio": (float, int), "sample_max_value": (float, int),
    "trained_betas": (list, tuple, type(None)),
    **{k: (str,) for k in ("beta_schedule", "prediction_type", "variance_type",
                           "timestep_spacing", "ddim_prev_timestep", "objective")},
    **{k: (bool,) for k in ("clip_sample", "set_alpha_to_one", "clipped_eps", "thresholding",
                            "rescale_betas_zero_snr")},
}


def check_schedule(d: dict, where: str, error: type[Exception], fix: str) -> None:
    """Types of a stored schedule dict, and T (which sizes every table) within the limit."""
    check_types(d, SCHEDULE_TYPES, where, error, fix)
    sizes = [("num_train_timesteps", d.get("num_train_timesteps", 1), 1),
             ("trained_betas length", len(d.get("trained_betas") or ()), 0)]
    for what, value, minimum in sizes:
        try:
            check_int(f"{where} {what}", value, "TIMESTEPS", minimum=minimum)
        except ConfigError as e:
            raise error(str(e)) from None
