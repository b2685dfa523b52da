"""The ``ddpm_sampler`` request schema and its validation, for every serving path.

A request carries one or more *rows* (Triton's batch axis): each row is one sampling job
``(seed, num_images, steps, sampler, label, guidance, eta)`` and yields ``num_images`` images.
Rows are validated with :meth:`ddpm.runtime.Sampler.plan` -- the same checks and the same
one-line :class:`ddpm.errors.ConfigError` messages as ``ddpm-run`` -- before any model call, so
a bad request costs nothing and never reaches the network.

Triton itself rejects a wrong datatype or shape against ``config.pbtxt`` before the model sees
the request; :func:`parse_rows` re-checks shapes because a caller outside Triton (the benchmark,
tests) can hand it anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddpm.errors import ConfigError, DDPMError

#: Largest ``num_images`` one row may ask for unless the server is told otherwise: one request
#: must not be able to take the whole machine's memory.
DEFAULT_MAX_IMAGES = 64


@dataclass(frozen=True)
class Field:
    """One input of ``ddpm_sampler``: Triton ``config.pbtxt`` type and KServe wire type."""

    name: str
    triton: str  # data_type in config.pbtxt
    wire: str  # "datatype" in a KServe v2 request
    optional: bool
    help: str


INPUTS: tuple[Field, ...] = (
    Field("seed", "TYPE_UINT64", "UINT64", False, "noise seed, 0..2**32-1"),
    Field("num_images", "TYPE_INT32", "INT32", False, "images for this row, 1..max_images"),
    # Optional inputs default to what ddpm-run uses (the Sampler's defaults).
    Field("steps", "TYPE_INT32", "INT32", True, "inference steps, 1..T"),
    Field("sampler", "TYPE_STRING", "BYTES", True, "ddpm, ddim, dpm++2m or mix (as ddpm-run --sampler)"),
    Field("label", "TYPE_INT32", "INT32", True, "class for every image; default cycles 0..K-1"),
    Field("guidance", "TYPE_FP32", "FP32", True, "classifier-free guidance scale"),
    Field("eta", "TYPE_FP32", "FP32", True, "DDIM eta"),
)
OUTPUT = "images"  # uint8, (rows, num_images, H, W, C)
_BY_NAME = {f.name: f for f in INPUTS}
#: Optional input -> its ``Sampler.sample`` keyword.
_KEYS = {"steps": "steps", "sampler": "sampler", "label": "labels", "guidance": "guidance",
         "eta": "eta"}


def _column(name: str, arr: Any, rows: int | None) -> np.ndarray:
    """``arr`` as one value per row: Triton hands (rows, 1); a bare (rows,) is accepted too."""
    a = np.asarray(arr)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim > 2 or (a.ndim == 2 and a.shape[1] != 1) or (rows is not None and a.shape[0] != rows):
        want = f"({rows}, 1)" if rows is not None else "(rows, 1)"
        raise ConfigError(
            f"input {name!r} must hold one value per request row, shape {want}, got shape "
            f"{tuple(a.shape)}; send one {_BY_NAME[name].wire} per row", field=name,
        )
    return a.reshape(-1)


def _scalar(name: str, value: Any) -> Any:
    """A Python value of the field's kind; a wrong kind is a ConfigError naming the field."""
    kind = _BY_NAME[name].wire
    if kind == "BYTES":
        if isinstance(value, (bytes, np.bytes_)):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"input {name!r} is not UTF-8 text; send e.g. b'ddim'",
                                  field=name) from None
        if isinstance(value, str):
            return value
        raise ConfigError(f"input {name!r} must be text (BYTES), got {value!r}", field=name)
    v = np.asarray(value)
    if kind == "FP32":
        if v.dtype.kind not in "fiu":
            raise ConfigError(f"input {name!r} must be a number ({kind}), got {value!r}", field=name)
        return float(v)
    if v.dtype.kind not in "iu":
        raise ConfigError(f"input {name!r} must be an integer ({kind}), got {value!r}", field=name)
    return int(v)


def parse_rows(inputs: Mapping[str, Any], *, max_images: int = DEFAULT_MAX_IMAGES) -> list[dict[str, Any]]:
    """Request tensors -> one ``Sampler.sample`` keyword dict per row (``n`` included).

    Only structure is checked here (known names, required inputs present, one value per row,
    the ``max_images`` cap); :func:`validate_rows` applies the model's own limits.
    """
    unknown = sorted(set(inputs) - set(_BY_NAME))
    if unknown:
        raise ConfigError(
            f"unknown input {unknown[0]!r}; ddpm_sampler takes {', '.join(_BY_NAME)}",
            field=unknown[0],
        )
    for f in INPUTS:
        if not f.optional and f.name not in inputs:
            raise ConfigError(f"input {f.name!r} is required ({f.help})", field=f.name)
    rows = None
    cols: dict[str, np.ndarray] = {}
    for name, arr in inputs.items():
        cols[name] = _column(name, arr, rows)
        rows = cols[name].shape[0]
    if not rows:
        raise ConfigError("the request has no rows; send one value per input", field="seed")
    out = []
    for r in range(rows):
        v = {name: _scalar(name, col[r]) for name, col in cols.items()}
        n = v["num_images"]
        if not 1 <= n <= max_images:
            raise ConfigError(
                f"num_images must be an integer 1..{max_images} (this server's limit), got {n}; "
                "split larger requests", field="num_images",
            )
        # An absent optional input is not passed at all: the Sampler applies its own default
        # (the same one ddpm-run uses), so server and CLI cannot drift apart.
        row = {"n": n, "seed": v["seed"]}
        row.update({_KEYS[k]: val for k, val in v.items() if k in _KEYS})
        out.append(row)
    if len({row["n"] for row in out}) > 1:
        raise ConfigError(
            f"num_images must be the same in every row of one request, got "
            f"{[row['n'] for row in out]}; send rows with different sizes as separate requests",
            field="num_images",
        )
    return out


def validate_rows(sampler: Any, rows: list[dict[str, Any]]) -> None:
    """Every row through ``sampler.plan`` (the CLI's checks); raises its ConfigError."""
    for row in rows:
        kw = dict(row)
        sampler.plan(kw.pop("n"), **kw)


class RequestRunner:
    """Validates and samples one request; thread-safe (a Sampler holds only immutable state)."""

    def __init__(self, sampler: Any, *, max_images: int = DEFAULT_MAX_IMAGES) -> None:
        self.sampler = sampler
        self.max_images = int(max_images)

    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """uint8 (rows, num_images, H, W, C); raises DDPMError for a bad request."""
        rows = parse_rows(inputs, max_images=self.max_images)
        validate_rows(self.sampler, rows)  # all rows before the first model call
        images = []
        for row in rows:
            kw = dict(row)
            images.append(self.sampler.sample(kw.pop("n"), **kw).images)
        return np.stack(images)


def error_message(e: BaseException) -> str:
    """The one line a client is told: our message as is; anything else prefixed with its type."""
    if isinstance(e, DDPMError):
        return str(e)
    text = " ".join(str(e).split())  # a third-party message may span lines
    return f"internal error in ddpm_sampler: {type(e).__name__}: {text}"
