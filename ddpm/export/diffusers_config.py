"""diffusers folders read by ``ddpm-export``: the pipeline index and the scheduler config.

:func:`schedule_from_scheduler_config` turns a ``DDPMScheduler`` / ``DDIMScheduler``
``scheduler_config.json`` into a :class:`ddpm.schedule.ScheduleConfig` that samples as
diffusers does: every key is either honoured or refused with one line naming the key, its
value and the fix, never dropped. An imported schedule also takes diffusers' sampling
conventions (DDIM steps to t - T//N; its direction term from the raw model output, the
pipelines' ``use_clipped_model_output=False``), where our own models default otherwise.

:func:`check_pipeline` reads ``model_index.json`` and accepts only the pixel-space
unconditional pipelines (``DDPMPipeline`` / ``DDIMPipeline``: a ``UNet2DModel`` in ``unet/``
and a DDPM/DDIM scheduler in ``scheduler/``). Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ddpm.errors import CheckpointError, ConfigError
from ddpm.schedule import ScheduleConfig

PIPELINE_CLASSES = ("DDPMPipeline", "DDIMPipeline")
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
#: Keys whose meaning is ours unchanged.
SAME_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "prediction_type", "clip_sample",
    "clip_sample_range", "timestep_spacing", "steps_offset", "set_alpha_to_one",
    "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
    "rescale_betas_zero_snr", "trained_betas",
)
BETA_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear",
              "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
#: fixed_small_log adds exp(0.5·log σ²)·z = σ·z in diffusers: the same numbers as fixed_small.
VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
             "fixed_large": "fixed_large"}
_VARIANCE_FIX = {
    "learned": "the model predicts its variance (out_channels = 2×in_channels), which ddpm "
               "does not sample",
    "learned_range": "the model predicts its variance (out_channels = 2×in_channels), which "
                     "ddpm does not sample",
    "fixed_large_log": "diffusers itself takes the square root of log β (NaN) there",
}
#: Import conventions: what makes a diffusers model sample as it does in diffusers.
IMPORT_DEFAULTS = {"ddim_prev_timestep": "t_minus_ratio", "clipped_eps": False}


def read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({e}); fix or remove it") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{str(path)!r} holds {type(d).__name__}, not a JSON object")
    return d


def _refuse(src: Path, key: str, value: Any, why: str) -> CheckpointError:
    shown = value if not isinstance(value, list) else f"[{len(value)} values]"
    return CheckpointError(f"{str(src)!r}: scheduler option {key}={shown!r} {why}")


def schedule_from_scheduler_config(d: dict[str, Any], src: Path) -> tuple[ScheduleConfig, list[str]]:
    """(ScheduleConfig, notes) for a diffusers scheduler config; CheckpointError otherwise."""
    cls = d.get("_class_name")
    if cls is not None and cls not in SCHEDULER_CLASSES:
        raise CheckpointError(
            f"{str(src)!r} configures a diffusers {cls}; ddpm samples DDPMScheduler and "
            "DDIMScheduler configs: save the pipeline with DDPMScheduler.from_config(...) "
            "(or DDIMScheduler) as its scheduler"
        )
    kw: dict[str, Any] = dict(IMPORT_DEFAULTS)
    notes: list[str] = []
    for key, value in d.items():
        if key.startswith("_"):
            continue  # _class_name, _diffusers_version
        if key in SAME_KEYS:
            kw[key] = value
        elif key == "beta_schedule":
            if value not in BETA_NAMES:
                raise _refuse(src, key, value, f"is not supported; use one of {', '.join(BETA_NAMES)} "
                              "or give the β table as trained_betas")
            kw[key] = BETA_NAMES[value]
        elif key == "variance_type":
            if value not in VARIANCES:
                why = _VARIANCE_FIX.get(value, "is unknown")
                raise _refuse(src, key, value, f"is not supported: {why}; use fixed_small or fixed_large")
            kw[key] = VARIANCES[value]
            if value != VARIANCES[value]:
                notes.append(f"variance_type {value} samples as {VARIANCES[value]} (same σ)")
        elif key == "predict_epsilon":  # diffusers < 0.8 spelling of prediction_type
            kw.setdefault("prediction_type", "epsilon" if value else "sample")
        elif key == "tensor_format":  # diffusers < 0.3: which array library, no effect
            continue
        elif value is None or value is False:
            notes.append(f"scheduler key {key}={value!r} is not a DDPM/DDIM option; off, ignored")
        else:
            raise _refuse(src, key, value, "is not a DDPM/DDIM scheduler option ddpm knows; remove "
                          "it from the scheduler config if it has no effect, else this model "
                          "cannot be sampled as in diffusers")
    if kw.get("trained_betas") is not None and "num_train_timesteps" not in d:
        kw["num_train_timesteps"] = len(kw["trained_betas"])
    try:
        return ScheduleConfig(**kw), notes
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{str(src)!r}: scheduler config not usable ({e})") from None


def check_pipeline(root: Path) -> Path:
    """The ``unet/`` folder of a DDPM/DDIM pipeline at ``root``; refuse other pipelines."""
    index = read_json(root / "model_index.json")
    cls = index.get("_class_name")
    parts = {k: v for k, v in index.items() if not k.startswith("_")
             and isinstance(v, list) and any(x is not None for x in v)}
    classes = {k: (v[-1] if v else None) for k, v in parts.items()}
    shown = ", ".join(f"{k}={c}" for k, c in sorted(classes.items()))
    if cls not in PIPELINE_CLASSES or set(classes) != {"unet", "scheduler"}:
        raise CheckpointError(
            f"{str(root)!r} is a diffusers {cls} ({shown}); ddpm exports only pixel-space "
            "unconditional DDPMPipeline/DDIMPipeline folders (a UNet2DModel in unet/, a DDPM or "
            "DDIM scheduler in scheduler/): latent and text-conditioned pipelines need a VAE or "
            "text encoder ddpm does not run"
        )
    if classes["unet"] != "UNet2DModel" or classes["scheduler"] not in SCHEDULER_CLASSES:
        raise CheckpointError(
            f"{str(root)!r}: {cls} with {shown}; ddpm exports a UNet2DModel with a "
            "DDPMScheduler or DDIMScheduler"
        )
    unet = root / "unet"
    if not (unet / "config.json").is_file():
        raise CheckpointError(f"{str(root)!r}: model_index.json names a unet but {str(unet)!r} "
                              "has no config.json; re-save the pipeline with save_pretrained")
    return unet
