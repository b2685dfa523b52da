"""Engines: one module per way of running the network, all behind :class:`base.Engine`.

``ENGINES`` maps a backend name to ``"module:Class"``; the module is imported only when that
backend is opened, so importing this package never imports torch (or OpenVINO, ...).

Adding an engine takes two steps:

1. write ``ddpm/runtime/engines/NAME.py`` with a class built as
   ``NameEngine(path, device="cpu", **options)`` that has ``name``, ``contract``, ``device``,
   ``path``, a thread-safe ``run(x, t, y) -> out`` and ``close()``, plus the class attributes
   ``default_file`` (looked for when given a folder, e.g. ``"model.xml"``) and
   ``written_by`` (the command that writes it, for the not-found message), and optionally
   ``compute_precisions`` (default ``("fp32",)``: the arithmetic it can run, e.g. OpenVINO's
   ``("fp32", "bf16")``; it receives ``compute_precision=`` for anything but fp32) and
   ``file_precisions`` (default ``("fp32",)``: the graph variants of :data:`PRECISIONS` it
   can open, e.g. ``("fp32", "int8")`` for one that runs ``model_int8.onnx``). Keep the
   module import cheap: import the heavy library inside ``__init__``;
2. add one line ``"NAME": "ddpm.runtime.engines.NAME:NameEngine"`` to ``ENGINES``.

:func:`open_engine` passes an engine only the options its constructor names (or all of
them, if it takes ``**options``), so an option one engine does not know is not an error.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from ddpm.errors import ArtifactError, BackendError
from ddpm.runtime.engines.base import Engine, HoldsSessions
from ddpm.runtime.engines.kinds import check_kind
from ddpm.runtime.threads import check_threads

ENGINES: dict[str, str] = {
    "ort": "ddpm.runtime.engines.ort:OrtEngine",
    "torchscript": "ddpm.runtime.engines.torchscript:TorchScriptEngine",
    "torch": "ddpm.runtime.engines.torch:TorchEngine",
    "pt2": "ddpm.runtime.engines.pt2:Pt2Engine",
    "openvino": "ddpm.runtime.engines.openvino:OpenVinoEngine",
    "auto": "ddpm.runtime.engines.auto:AutoEngine",
}
BACKENDS = tuple(ENGINES)
DEVICES = ("cpu", "cuda")
#: ``precision`` -> suffix of the ONNX file holding that graph (ddpm-export --int8 writes it).
PRECISIONS = {"fp32": "", "int8": "_int8", "fp16": "_fp16"}
#: Precisions of the arithmetic rather than of the file: the fp32 graph, run by an engine
#: whose ``compute_precisions`` names it (see the module docstring).
COMPUTE_PRECISIONS = ("bf16",)
#: Files tried in order when an fp32 engine is given a folder, best first, by (backend,
#: device): the CPU EP runs ddpm-export --optimize's fused graph faster than the plain one.
#: fp16 is never picked unasked (precision="fp16" opens model_fp16.onnx).
PREFERRED = {("ort", "cpu"): ("model_optimized.onnx",)}
#: (backend, device) served by a device-specific subclass of the backend's engine.
DEVICE_ENGINES = {("ort", "cuda"): "ddpm.runtime.engines.ort_cuda:OrtCudaEngine"}

__all__ = ["BACKENDS", "COMPUTE_PRECISIONS", "DEVICES", "ENGINES", "Engine", "HoldsSessions", "engine_class", "open_engine", "resolve_file"]


def engine_class(backend: str) -> type:
    """The class registered for ``backend`` (imports its module)."""
    if backend not in ENGINES:
        raise BackendError(
            f"unknown backend {backend!r}; expected one of {', '.join(ENGINES)}", field="backend"
        )
    module, _, cls = ENGINES[backend].partition(":")
    return getattr(importlib.import_module(module), cls)


def resolve_file(path: str | Path, backend: str, precision: str = "fp32", device: str = "cpu") -> Path:
    """``path`` itself, or the best file for ``backend`` on ``device`` inside the folder ``path``.

    ``precision="int8"`` (ORT, OpenVINO) / ``"fp16"`` (ORT) map ``model.onnx`` / a folder to
    ``model_int8.onnx`` / ``model_fp16.onnx`` (and the bundled ``digits.onnx`` to
    ``digits_int8.onnx``) unless the name already says so. For fp32 a folder gives the
    first file of :data:`PREFERRED` present there, else the engine's ``default_file``.
    """
    cls = engine_class(backend)
    if precision not in PRECISIONS:
        known = (*PRECISIONS, *COMPUTE_PRECISIONS)
        raise BackendError(
            f"unknown precision {precision!r}; expected one of {', '.join(known)}", field="precision"
        )
    if precision not in getattr(cls, "file_precisions", ("fp32",)):
        able = [b for b in ENGINES if precision in getattr(engine_class(b), "file_precisions", ())]
        raise BackendError(
            f"precision {precision} (the model{PRECISIONS[precision]}.onnx graph of ddpm-export "
            f"--{precision}) runs on backend {' or '.join(map(repr, able))}, got backend "
            f"{backend!r}; use one of those or precision fp32", field="precision"
        )
    p = Path(path)
    if p.is_dir():
        best = [p / f for f in PREFERRED.get((backend, device), ()) if precision == "fp32"]
        p = next((f for f in best if f.is_file()), p / cls.default_file)
    suffix = PRECISIONS[precision]
    if suffix and not p.stem.endswith(suffix):
        p = p.with_name(f"{p.stem}{suffix}{p.suffix}")
        if not p.is_file():
            raise ArtifactError(
                f"{precision} model {str(p)!r} not found; write it with `ddpm-export CKPT --{precision}` "
                "or use precision fp32", field="precision"
            )
    if not p.is_file():
        raise ArtifactError(
            f"model file {str(p)!r} not found; pass the {cls.default_file} written by "
            f"{cls.written_by} (backend {backend!r})", field="path"
        )
    return p


def compute_precision(backend: str, precision: str) -> str | None:
    """The ``compute_precision`` to hand ``backend``'s engine for ``precision`` (None: it is a
    file variant or fp32); BackendError naming the backends that run it if this one cannot."""
    if precision not in COMPUTE_PRECISIONS:
        return None
    if precision in getattr(engine_class(backend), "compute_precisions", ("fp32",)):
        return precision
    able = [b for b in ENGINES if precision in getattr(engine_class(b), "compute_precisions", ())]
    raise BackendError(
        f"precision {precision!r} is computed by backend {' or '.join(map(repr, able))} only, "
        f"got backend {backend!r}; use backend {able[0]!r} or precision 'fp32'", field="precision",
    )


def open_engine(path: str | Path, backend: str = "ort", device: str = "cpu", **options: Any) -> Engine:
    """Open ``path`` with ``backend`` on ``device``; every failure is a one-line DDPMError.

    ``precision`` picks the file (see :func:`resolve_file`), or for a compute precision such
    as bf16 the engine's arithmetic; ``num_threads`` is checked against
    :func:`ddpm.runtime.threads.check_threads`; other options go to the engine.
    """
    cls = engine_class(backend)
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}", field="device")
    check_threads(options.get("num_threads"))
    precision = options.pop("precision", "fp32")
    compute = compute_precision(backend, precision)
    if compute is not None:
        options["compute_precision"] = compute
        precision = "fp32"  # the arithmetic changes, the file is the fp32 graph
    p = resolve_file(path, backend, precision, device)
    check_kind(p, backend, cls.default_file)
    if options.get("tf32") and device != "cuda":
        raise BackendError(
            f"--tf32 needs --device cuda, got device {device!r} (TF32 is CUDA tensor-core math); "
            "drop --tf32 or pass --device cuda", field="tf32",
        )
    if (backend, device) in DEVICE_ENGINES:
        module, _, name = DEVICE_ENGINES[backend, device].partition(":")
        cls = getattr(importlib.import_module(module), name)
    params = inspect.signature(cls).parameters
    if not any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    return cls(p, device, **options)
