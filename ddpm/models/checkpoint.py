"""Checkpoint I/O: the ``ckpt.pt`` that ``ddpm-train`` writes and export / runtime read.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts -- no custom
classes -- so ``torch.load(path, weights_only=True)`` can read it and refuses anything that
would run code on load. It carries the model config and schedule, so a model can be rebuilt
from the file alone. Keys::

    format="ddpm-toolkit/ckpt", format_version=1, arch, model_config, schedule, data,
    ema, model, optimizer, step, rng, train_args, losses, versions

Loading is one validation layer, in this order, so nothing large is allocated for a bad
file: the zip directory (size limit, deflate bombs) before torch is imported; the format
tag, version and every header key's type; the sizes in ``data`` / ``schedule`` /
``model_config`` against :mod:`ddpm.limits`; a NaN/Inf scan of the chosen weights before
the model is built.

Lives in ``ddpm.models`` (not ``ddpm.training``) because export and the runtime's torch
backend load checkpoints and must not import the trainer.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

from ddpm import limits
from ddpm._io import atomic_path, output_error
from ddpm.errors import CheckpointError, ConfigError
from ddpm.schedule import ScheduleConfig

FORMAT = "ddpm-toolkit/ckpt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("arch", "model_config", "schedule", "data", "ema", "model", "step")
WEIGHTS = ("ema", "model")

_OPTIONAL = (dict, type(None))
#: Header key -> allowed types, checked before the model is built (bool is never an int).
HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "arch": (str,), "model_config": (dict,), "schedule": (dict,), "data": (dict,),
    "ema": _OPTIONAL, "model": _OPTIONAL, "step": (int,), "optimizer": _OPTIONAL,
    "rng": _OPTIONAL, "train_args": _OPTIONAL, "losses": (list, type(None)),
    "versions": _OPTIONAL,
}
DATA_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str, type(None)), "image_size": (int,), "channels": (int,),
    "num_classes": (int,), "class_names": (list, type(None)), "value_range": (list, tuple),
}
#: A zip member this much larger than its compressed bytes (and above BOMB_MIN_BYTES) is a
#: deflate bomb: torch.save writes members uncompressed, and float weights barely deflate.
BOMB_RATIO = 100
BOMB_MIN_BYTES = 64 << 20
KEPT = "the previous checkpoint there, if any, is unchanged"


def _not_loadable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is not a readable ddpm checkpoint ({why}); "
        "pass the ckpt.pt written by ddpm-train (re-run training if the file was cut short)"
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a ``ckpt.pt`` on CPU with ``weights_only=True``.

    Raises CheckpointError naming the file and the fix for a missing, truncated, foreign,
    oversized or unsafe file (pickled code, a deflate bomb), a wrong format tag, a newer
    format version, a header value of the wrong type or above a limit, or an unknown arch.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {str(p)!r} not found; pass the ckpt.pt written by ddpm-train"
        )
    if p.is_dir():
        raise CheckpointError(
            f"checkpoint {str(p)!r} is a folder; pass the ckpt.pt file inside it"
        )
    check_archive(p)  # before importing torch: a bomb is refused in milliseconds
    import torch  # heavy; keep `import ddpm.models.checkpoint` cheap for CLIs' --help

    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses globals it does not allow-list: the pickle wants to
        # construct arbitrary objects (or run code). Never fall back to a full unpickle.
        if _looks_pickled(p) and "weights only" in str(e).lower():
            raise CheckpointError(
                f"{str(p)!r} is not a safe ddpm checkpoint: it contains pickled objects that "
                "weights_only loading refuses (it could run code); only load checkpoints "
                "written by ddpm-train"
            ) from None
        # torch's own message advises weights_only=False, which we never do: don't echo it.
        reason = "not a torch checkpoint" if "weights only" in str(e).lower() else _first_line(e)
        raise _not_loadable(p, f"unpickling failed: {reason}") from None
    except Exception as e:  # noqa: BLE001 -- garbage bytes fail in many ways (KeyError, EOFError, ...)
        raise _not_loadable(p, f"{type(e).__name__}: {_first_line(e)}") from None
    return validate_checkpoint(ckpt, p)


def check_archive(path: Path) -> None:
    """Refuse a file whose zip directory promises more bytes than the limit, or a deflate
    bomb, from the directory alone: nothing is decompressed or allocated."""
    size = path.stat().st_size
    bound = limits.limit("CHECKPOINT_BYTES")
    if size > bound:
        raise CheckpointError(
            f"{str(path)!r} is {size} bytes, above the checkpoint limit {bound}; "
            f"{limits.how_to_raise('CHECKPOINT_BYTES')}"
        )
    if not zipfile.is_zipfile(path):
        return  # a legacy pickle or garbage: torch.load's own checks report it
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    total = sum(i.file_size for i in infos)
    for i in infos:
        if i.file_size > BOMB_MIN_BYTES and i.file_size > BOMB_RATIO * max(i.compress_size, 1):
            raise CheckpointError(
                f"{str(path)!r} is not a ddpm checkpoint: member {i.filename!r} inflates "
                f"{i.compress_size} bytes to {i.file_size} (a deflate bomb); torch.save never "
                "compresses, so pass the ckpt.pt written by ddpm-train"
            )
    if total > bound:
        raise CheckpointError(
            f"{str(path)!r} unpacks to {total} bytes, above the checkpoint limit {bound}; "
            f"{limits.how_to_raise('CHECKPOINT_BYTES')}"
        )


def _looks_pickled(path: Path) -> bool:
    """A torch zip archive or a raw pickle (protocol >= 2 opens with 0x80), not random bytes
    that the unpickler happened to read as an opcode it refuses."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def validate_checkpoint(ckpt: Any, path: str | os.PathLike = "<checkpoint>") -> dict[str, Any]:
    """Check the format tag, version, required keys, header types and limits, and arch of a
    loaded checkpoint dict (the model config's own fields are checked when it is built)."""
    from ddpm.models.registry import archs

    name = repr(str(path))
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{name} is not a ddpm-toolkit checkpoint (format tag {found!r}, expected "
            f"{FORMAT!r}); pass the ckpt.pt written by ddpm-train"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has checkpoint format_version {version!r}; this ddpm reads version "
            f"<= {FORMAT_VERSION}; upgrade ddpm-toolkit"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{name} lacks checkpoint key(s) {missing}; it is incomplete, re-run ddpm-train"
        )
    fix = "the file is damaged or not written by ddpm-train; re-run ddpm-train"
    limits.check_types(ckpt, HEADER_TYPES, f"checkpoint {name}", CheckpointError, fix)
    limits.check_types(ckpt["data"], DATA_TYPES, f"checkpoint {name} data", CheckpointError,
                       fix)
    limits.check_schedule(ckpt["schedule"], f"checkpoint {name} schedule", CheckpointError,
                          fix)
    _check_bounds(ckpt, name)
    known = archs()
    if ckpt["arch"] not in known:
        raise CheckpointError(
            f"{name} was trained with arch {ckpt['arch']!r}, which this ddpm does not know "
            f"(known: {', '.join(known)}); upgrade ddpm-toolkit or retrain"
        )
    return ckpt


def _check_bounds(ckpt: dict[str, Any], name: str) -> None:
    """Sizes that later code allocates from, against ``ddpm.limits``, as CheckpointErrors."""
    data = ckpt["data"]
    checks = [
        (f"checkpoint {name} step", ckpt["step"], "STEPS", 0),
        (f"checkpoint {name} data image_size", data.get("image_size", 1), "IMAGE_SIZE", 1),
        (f"checkpoint {name} data channels", data.get("channels", 1), "IMAGE_CHANNELS", 1),
        (f"checkpoint {name} data num_classes", data.get("num_classes", 0), "NUM_CLASSES", 0),
    ]
    for what, value, bound, minimum in checks:
        try:
            limits.check_int(what, value, bound, minimum=minimum)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None


def check_finite(state: dict[str, Any], what: str) -> None:
    """Refuse weights holding NaN/Inf (a diverged run): one pass, no copies kept."""
    import torch

    bad = []
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(
                f"{what} entry {key!r} is a {limits.type_name(t)}, not a tensor; the file is "
                "damaged or not written by ddpm-train"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(key)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{what} hold NaN/Inf values in {bad[0]!r}{more}: training diverged; use an "
            "earlier checkpoint or retrain with a lower --lr and --grad-clip 1"
        )


def model_from_checkpoint(ckpt: dict[str, Any], weights: str = "ema"):
    """Rebuild the model from the checkpoint's stored arch + config alone.

    Returns ``(model in eval mode on CPU, ScheduleConfig)``. ``weights`` picks the EMA
    weights (default; what sample grids and export use) or the raw training weights.
    """
    from ddpm.models.registry import build, config_from_dict

    if weights not in WEIGHTS:
        raise ConfigError(f"unknown weights {weights!r}; expected one of {', '.join(WEIGHTS)}")
    ckpt = validate_checkpoint(ckpt)
    state = ckpt.get(weights)
    if not state:
        raise CheckpointError(
            f"checkpoint has no {weights!r} weights; pass weights='model' or retrain"
        )
    try:
        # Types and limits of every field are checked here, before torch allocates a layer.
        config = config_from_dict(ckpt["arch"], dict(ckpt["model_config"]))
        schedule = ScheduleConfig.from_dict(dict(ckpt["schedule"]))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint model_config/schedule is invalid: {_first_line(e)}"
        ) from None
    check_finite(state, f"checkpoint {weights!r} weights")
    model = build(ckpt["arch"], config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {weights!r} weights do not fit arch {ckpt['arch']!r} with its stored "
            f"config ({_first_line(e)}); the file is inconsistent, retrain"
        ) from None
    model.eval()
    return model, schedule


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Write ``ckpt`` atomically (temp file in the same folder + os.replace)."""
    import torch

    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"refusing to save a dict without format tag {FORMAT!r}")
    try:
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    except OSError as e:
        raise output_error(path, e, "checkpoint", KEPT) from None
    except RuntimeError as e:
        # torch's C++ zip writer turns a failed write (full disk, I/O error) into a
        # RuntimeError such as "PytorchStreamWriter failed writing file" or "unexpected pos";
        # the dict holds only tensors and plain values, so a write is what failed.
        code = errno.ENOSPC if _nearly_full(Path(path).parent) else errno.EIO
        raise output_error(path, OSError(code, f"torch.save failed ({_first_line(e)})"),
                           "checkpoint", KEPT) from None
    return Path(path)


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 16 << 20
    except OSError:
        return False
