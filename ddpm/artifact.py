"""The artifact contract: everything an exported model carries so a runtime can sample it.

Export writes it, the runtime reads and validates it; nothing here imports more than numpy
and the standard library, so ``ddpm.artifact.read(path)`` works where torch and onnx are absent.

Where it lives:
- ONNX: ``ModelProto.metadata_props`` entry ``ddpm.contract`` = the contract as JSON. It is
  read with a minimal protobuf scanner below, so reading needs neither ``onnx`` nor a session.
- TorchScript: ``_extra_files={"ddpm_contract.json": ...}``, stored in the zip archive as
  ``<archive>/extra/ddpm_contract.json``.

The contract pins the schedule by value *and* by the SHA-256 of its float64 β table, so a
runtime that rebuilds the table from the stored config can prove it got the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm.errors import ArtifactError, ConfigError
from ddpm.schedule import ScheduleConfig

CONTRACT_KEY = "ddpm.contract"
TS_EXTRA_FILE = "ddpm_contract.json"
FORMAT = "ddpm-toolkit/artifact"
FORMAT_VERSION = 1
GRAPH_KINDS = ("model", "step")
REEXPORT_HINT = "re-export it with `ddpm-export CKPT` (ddpm-toolkit >= 0.1)"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (str for dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Contract:
    """What a model file promises. ``graph`` is "model" (predicts the network output) or
    "step" (a whole sampler step; ``step_graph`` then describes its signature)."""

    arch: str
    model_config: dict[str, Any]
    schedule: dict[str, Any]
    betas_sha256: str
    image_channels: int
    image_height: int
    image_width: int
    num_classes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    value_range: tuple[float, float] = (-1.0, 1.0)
    null_label: int | None = None
    graph: str = "model"
    precision: str = "fp32"
    step_graph: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    # -- derived views ---------------------------------------------------------------
    @property
    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig.from_dict(self.schedule)

    @property
    def prediction_type(self) -> str:
        return self.schedule_config.prediction_type

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return (self.image_channels, self.image_height, self.image_width)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    # -- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["outputs"] = [s.to_dict() for s in self.outputs]
        d["value_range"] = list(self.value_range)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "<contract>") -> Contract:
        if not isinstance(d, dict):
            raise ArtifactError(f"{source}: the ddpm contract is not a JSON object; {REEXPORT_HINT}")
        if d.get("format") != FORMAT:
            raise ArtifactError(
                f"{source}: contract format {d.get('format')!r} is not {FORMAT!r}; {REEXPORT_HINT}"
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{source}: contract version {d.get('format_version')!r} is not supported "
                f"(this ddpm reads version {FORMAT_VERSION}); {REEXPORT_HINT}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in d
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ArtifactError(f"{source}: contract lacks {missing}; {REEXPORT_HINT}")
        _check_field_types(d, source)
        try:
            kw = {k: v for k, v in d.items() if k in known}
            kw["inputs"] = tuple(TensorSpec.from_dict(s) for s in d["inputs"])
            kw["outputs"] = tuple(TensorSpec.from_dict(s) for s in d["outputs"])
            kw["value_range"] = tuple(float(v) for v in d.get("value_range", (-1.0, 1.0)))
            contract = cls(**kw)
        except (TypeError, KeyError, ValueError) as e:
            raise ArtifactError(f"{source}: malformed ddpm contract ({e}); {REEXPORT_HINT}") from None
        contract.validate(source=source)
        return contract

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<contract>") -> Contract:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{source}: ddpm contract is not valid JSON ({e}); {REEXPORT_HINT}") from None
        return cls.from_dict(d, source=source)

    def validate(self, *, source: str = "<contract>") -> None:
        """Raise ArtifactError if the contract contradicts itself."""
        def bad(msg: str) -> ArtifactError:
            return ArtifactError(f"{source}: inconsistent ddpm contract: {msg}; {REEXPORT_HINT}")

        try:
            sched = self.schedule_config
        except (ConfigError, TypeError) as e:
            raise bad(f"schedule {self.schedule} is invalid ({e})") from None
        if sched.betas_sha256() != self.betas_sha256:
            raise bad(
                f"β table hash {self.betas_sha256[:12]}… does not match the stored schedule "
                f"({sched.betas_sha256()[:12]}…)"
            )
        if min(self.image_channels, self.image_height, self.image_width) < 1:
            raise bad(f"image shape {self.image_shape} has a non-positive dimension")
        if self.num_classes < 0:
            raise bad(f"num_classes {self.num_classes} < 0")
        if self.conditional and self.null_label != self.num_classes:
            raise bad(f"null_label {self.null_label} != num_classes {self.num_classes}")
        if self.graph not in GRAPH_KINDS:
            raise bad(f"graph kind {self.graph!r} not in {GRAPH_KINDS}")
        if self.graph == "step" and not self.step_graph:
            raise bad("a step graph must describe its sampler in 'step_graph'")
        if not self.inputs or not self.outputs:
            raise bad("no inputs or outputs listed")
        if self.graph == "model":
            names = self.input_names
            if names[:2] != ("sample", "timestep"):
                raise bad(f"model inputs {names} must start with ('sample', 'timestep')")
            if self.inputs[1].dtype != "int64":
                raise bad(f"timestep dtype is {self.inputs[1].dtype}, expected int64")
            if self.conditional != ("class_labels" in names):
                raise bad(f"num_classes={self.num_classes} but inputs are {names}")


_INT, _STR, _LIST = (int,), (str,), (list, tuple)
#: Contract field -> allowed JSON types (bool is never an int), checked before anything else.
CONTRACT_TYPES: dict[str, tuple[type, ...]] = {
    "arch": _STR, "model_config": (dict,), "schedule": (dict,), "betas_sha256": _STR,
    "image_channels": _INT, "image_height": _INT, "image_width": _INT, "num_classes": _INT,
    "inputs": _LIST, "outputs": _LIST, "value_range": _LIST, "null_label": (int, type(None)),
    "graph": _STR, "precision": _STR, "step_graph": (dict, type(None)), "versions": (dict,),
}
TENSOR_TYPES: dict[str, tuple[type, ...]] = {"name": _STR, "dtype": _STR, "shape": _LIST}


def _check_field_types(d: dict[str, Any], source: str) -> None:
    """Wrong JSON types, sizes above ``ddpm.limits`` and a degenerate ``value_range`` as one
    ArtifactError naming the field, instead of a TypeError (or NaN images) later."""
    import math

    from ddpm import limits

    fix = REEXPORT_HINT
    limits.check_types(d, CONTRACT_TYPES, f"{source}: contract", ArtifactError, fix)
    limits.check_schedule(d["schedule"], f"{source}: contract schedule", ArtifactError, fix)
    for key in ("inputs", "outputs"):
        for i, spec in enumerate(d[key]):
            where = f"{source}: contract {key}[{i}]"
            if not isinstance(spec, dict):
                raise ArtifactError(
                    f"{where} must be an object, got {limits.type_name(spec)}; {fix}"
                )
            limits.check_types(spec, TENSOR_TYPES, where, ArtifactError, fix, required=True)
            dims = [v for v in spec["shape"] if isinstance(v, bool) or not isinstance(v, (int, str))]
            if dims:
                raise ArtifactError(f"{where} shape {spec['shape']!r} holds {dims[0]!r}, "
                                    f"not an int or an axis name; {fix}")
    sizes = [("image_channels", "IMAGE_CHANNELS", 1), ("image_height", "IMAGE_SIZE", 1),
             ("image_width", "IMAGE_SIZE", 1), ("num_classes", "NUM_CLASSES", 0)]
    for key, bound, minimum in sizes:
        try:
            limits.check_int(f"contract {key}", d[key], bound, minimum=minimum)
        except ConfigError as e:
            raise ArtifactError(f"{source}: {e}") from None
    vr = d.get("value_range", (-1.0, 1.0))
    ok = len(vr) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vr
    )
    if not ok or not vr[0] < vr[1]:
        raise ArtifactError(
            f"{source}: contract value_range {vr!r} must be two finite numbers lo < hi "
            f"(e.g. [-1, 1]); {fix}"
        )


def schedule_lines(schedule: ScheduleConfig) -> list[str]:
    """The schedule a contract stores, one ``key: value`` line per field (trained β as a
    count and range), for ``ddpm-export``'s log and ``ddpm-run --info``."""
    lines = []
    for key, value in schedule.to_dict().items():
        if key == "trained_betas" and value is not None:
            value = f"{len(value)} values in [{min(value):.6g}, {max(value):.6g}]"
        lines.append(f"{key}: {value}")
    return lines


def contract_for(
    *,
    arch: str,
    model_config: dict[str, Any],
    schedule: ScheduleConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    versions: dict[str, str],
    **extra: Any,
) -> Contract:
    """Build a validated contract, filling the β hash and null label from the other fields."""
    c, h, w = image_shape
    contract = Contract(
        arch=arch,
        model_config=dict(model_config),
        schedule=schedule.to_dict(),
        betas_sha256=schedule.betas_sha256(),
        image_channels=int(c),
        image_height=int(h),
        image_width=int(w),
        num_classes=int(num_classes),
        null_label=int(num_classes) if num_classes > 0 else None,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        versions={k: str(v) for k, v in versions.items()},
        **extra,
    )
    contract.validate()
    return contract


# -- reading ---------------------------------------------------------------------------------
def read(path: str | os.PathLike) -> Contract:
    """Read and validate the contract of an exported ``.onnx``, TorchScript or pt2 file."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"model file {str(p)!r} not found; pass the path of an exported model.onnx")
    if zipfile.is_zipfile(p):
        return Contract.from_json(_read_ts_extra(p), source=str(p))
    data = p.read_bytes()
    props = onnx_metadata_props(data, source=str(p))
    if CONTRACT_KEY not in props:
        raise ArtifactError(f"{p}: ONNX model has no ddpm contract (metadata '{CONTRACT_KEY}'); {REEXPORT_HINT}")
    return Contract.from_json(props[CONTRACT_KEY], source=str(p))


def _read_ts_extra(p: Path) -> bytes:
    """The contract of a zip archive: model.ts and model.pt2 keep it at ``*/extra/``."""
    kind = "pt2 package" if p.suffix == ".pt2" else "TorchScript archive"
    try:
        with zipfile.ZipFile(p) as zf:
            names = [n for n in zf.namelist() if n.endswith("/extra/" + TS_EXTRA_FILE)]
            if not names:
                raise ArtifactError(f"{p}: {kind} has no {TS_EXTRA_FILE}; {REEXPORT_HINT}")
            return zf.read(names[0])
    except (zipfile.BadZipFile, OSError) as e:
        raise ArtifactError(f"{p}: corrupt {kind} ({e}); re-export the model") from None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) of one protobuf message; LEN values as bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i : i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            val, i = buf[i : i + size], i + size
        elif wire == 5:
            val, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > n:
            raise ValueError("truncated message")
        yield num, wire, val


_MODEL_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props
_MODEL_GRAPH = 7


def onnx_metadata_props(data: bytes, *, source: str = "<onnx>") -> dict[str, str]:
    """``metadata_props`` of a serialized ONNX ModelProto, without the onnx package."""
    props: dict[str, str] = {}
    seen_graph = False
    try:
        for num, wire, val in _fields(data):
            if num == _MODEL_GRAPH and wire == 2:
                seen_graph = True
            elif num == _MODEL_METADATA_PROPS and wire == 2:
                entry = {k: v for k, w, v in _fields(val) if w == 2}
                props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{source}: not a valid ONNX file ({e}); re-export the model") from None
    if not seen_graph:
        raise ArtifactError(f"{source}: not a valid ONNX file (no graph); re-export the model")
    return props
