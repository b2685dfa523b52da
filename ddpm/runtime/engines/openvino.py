"""model.onnx on OpenVINO's CPU plugin: static-shape compiled models, fp32 pinned, bf16 opt-in.

OpenVINO reads the exported ``model.onnx`` as it is (no conversion step). A diffusion loop
calls one graph at one batch size hundreds of times, so each batch size gets its own
compiled model with every input's batch dimension fixed by ``reshape`` (static shapes let
the plugin pick its fastest kernels and fold the exporter's shape arithmetic). Precision is
pinned: OpenVINO's default on CPUs with AMX or AVX512-BF16 silently runs fp32 graphs in bf16,
which changes images, so ``INFERENCE_PRECISION_HINT`` is ``f32`` unless bf16 is asked for
(``compute_precision="bf16"``, ``ddpm-run --precision bf16``). That is refused on CPUs
without native bf16 (read from the plugin's ``OPTIMIZATION_CAPABILITIES``), and refused
again if the compiled model reports it runs another precision. Compiled blobs are cached
(``CACHE_DIR``) beside the model when that folder is writable, else in the user cache
folder, so later processes skip compilation.

On ``threads`` > 1 a batch of B >= 2 is split like the ORT engine splits it: ``threads``
contiguous chunks run side by side (OpenVINO releases the GIL) on one compiled model of
the chunk size with ``threads`` single-thread, unpinned streams, so the chunks do not queue
behind each other on one stream or one core. A small UNet is many short ops,
and one multi-threaded request pays a hand-off per op (figures in docs/cpu-engines.md). A
single image runs on one compiled model with all threads (``split=False`` does that for
every batch).

An infer request is not thread-safe, a compiled model is: each call borrows an idle request
of its compiled model from a small pool (creating one when all are busy) and returns it, so
any number of threads may call :meth:`OpenVinoEngine.run` at once. Calls take their thread
count from the process-wide :data:`ddpm.runtime.threads.BUDGET` like the ORT engine.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ddpm import artifact
from ddpm.errors import ArtifactError, BackendError, first_line
from ddpm.runtime import forksafe
from ddpm.runtime.engines.kinds import check_kind
from ddpm.runtime.engines.signature import check_signature, openvino_ports
from ddpm.runtime.ort_session import physical_cores
from ddpm.runtime.threads import BUDGET

INSTALL_HINT = 'pip install "ddpm-toolkit[openvino]"'
#: precision name -> OpenVINO INFERENCE_PRECISION_HINT value and the capability it needs.
PRECISIONS = {"fp32": ("f32", "FP32"), "bf16": ("bf16", "BF16")}
#: Compiled models kept per engine, one per (threads, batch), least recently used dropped
#: first; a sampling run needs at most three (full chunks, the last batch's, one image).
MAX_COMPILED = 4
CACHE_SUBDIR = ".openvino_cache"


def import_openvino() -> Any:
    """The ``openvino`` module, or BackendError naming the extra to install."""
    try:
        import openvino
    except ImportError as e:
        raise BackendError(
            f"backend 'openvino' needs the openvino package, which is not importable ({e}); "
            f"install it with `{INSTALL_HINT}`, or use --backend ort", field="backend",
        ) from None
    return openvino


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ddpm`` (default ``~/.cache/ddpm``): per-user caches of compiled models."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ddpm"


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".ddpm-probe-")  # os.access lies for root
        os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


def cache_dir_for(path: Path) -> Path | None:
    """Where compiled blobs of ``path`` go: beside it if writable, else the user cache, else None.

    The package's own folder (the bundled model) is never written to: it belongs to pip.
    """
    package_dir = Path(__file__).resolve().parents[2]
    beside = path.resolve().parent
    if package_dir not in (beside, *beside.parents) and _writable(beside / CACHE_SUBDIR):
        return beside / CACHE_SUBDIR
    user = user_cache_dir() / "openvino"
    return user if _writable(user) else None


def cpu_capabilities(core: Any) -> tuple[str, ...]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES, e.g. ("FP32", "INT8", "BF16")."""
    return tuple(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (False without openvino)."""
    try:
        return "BF16" in cpu_capabilities(import_openvino().Core())
    except BackendError:
        return False


class _Compiled:
    """One compiled model at one batch size with its pool of idle infer requests."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.idle: list[Any] = []
        self.lock = threading.Lock()

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self.lock:
            req = self.idle.pop() if self.idle else self.compiled.create_infer_request()
        try:
            req.infer(feeds)
            # The output tensor is the request's own buffer, reused by its next call: copy.
            return np.array(req.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            with self.lock:
                self.idle.append(req)


class OpenVinoEngine:
    """model.onnx on OpenVINO CPU; ``compute_precision`` "fp32" (pinned) or "bf16" (native only)."""

    name = "openvino"
    default_file = "model.onnx"
    written_by = "ddpm-export"
    compute_precisions = tuple(PRECISIONS)
    #: model_int8.onnx (QDQ) runs on OpenVINO's int8 kernels with the f32 hint unchanged.
    file_precisions = ("fp32", "int8")

    def __init__(
        self, path: Path, device: str = "cpu", *, num_threads: int | None = None,
        compute_precision: str = "fp32", cache: bool = True, split: bool = True,
    ) -> None:
        precision = compute_precision
        if device != "cpu":
            raise BackendError(
                f"backend 'openvino' runs on the CPU only, got device {device!r}; pass --device cpu, "
                "or use --backend ort with --device cuda", field="device",
            )
        if precision not in PRECISIONS:
            raise BackendError(
                f"backend 'openvino' has no precision {precision!r}; expected one of "
                f"{', '.join(PRECISIONS)}", field="precision",
            )
        self.path = Path(path)
        self.device = device
        self.precision = precision
        check_kind(self.path, "openvino", self.default_file)
        self.contract = artifact.read(self.path)
        if self.contract.graph != "model":
            raise ArtifactError(
                f"{self.path}: is a whole-step graph ({self.contract.graph!r}); ddpm-run samples "
                "the plain model graph: pass the model.onnx exported without --with-step"
            )
        ov = import_openvino()
        self._core = ov.Core()
        hint, needs = PRECISIONS[precision]
        caps = cpu_capabilities(self._core)
        if needs not in caps:
            from ddpm.cpuinfo import cpu_model

            raise BackendError(
                f"--precision {precision} needs native {needs} on the CPU (AMX or AVX512-BF16), "
                f"but this CPU ({cpu_model()}) offers {', '.join(caps)}; drop --precision "
                "(fp32) or run on a CPU with bf16 support", field="precision",
            )
        try:
            self._model = self._core.read_model(str(self.path))
        except Exception as e:  # OpenVINO raises RuntimeError subtypes from its frontends
            raise ArtifactError(
                f"{self.path}: OpenVINO cannot read this model ({first_line(e)}); re-export it "
                "with `ddpm-export CKPT`, or use --backend ort", field="path",
            ) from None
        check_signature(self.path, self.contract, openvino_ports(self._model.inputs),
                        openvino_ports(self._model.outputs))
        self.threads = max(1, int(num_threads or physical_cores()))
        self.split = split and self.threads > 1
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        self.cache_dir = cache_dir_for(self.path) if cache else None
        if self.cache_dir is not None:
            self._config["CACHE_DIR"] = str(self.cache_dir)
        self._compiled: OrderedDict[tuple[int, int], _Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        forksafe.register(self)

    def _compile(self, key: tuple[int, int]) -> _Compiled:
        threads, batch = key
        model = self._model.clone()
        shapes = {}
        for inp, spec in zip(model.inputs, self.contract.inputs, strict=True):
            # Every contract dimension is fixed except the batch (the leading "batch" axis).
            shapes[inp.get_any_name()] = [batch, *(int(d) for d in spec.shape[1:])]
        try:
            model.reshape(shapes)
            config = {**self._config, "INFERENCE_NUM_THREADS": threads}
            if self.split and threads < self.threads:
                # The chunks of a batch run side by side on requests of this one model. With
                # one stream they would queue behind each other (2x slower, measured): one
                # single-thread stream per worker. Unpinned: an uneven split (5 -> 2 + 3) uses
                # two models, whose first streams the plugin would pin to the same core.
                config.update(INFERENCE_NUM_THREADS=self.threads, NUM_STREAMS=self.threads,
                              ENABLE_CPU_PINNING=False)
            compiled = self._core.compile_model(model, "CPU", config)
        except Exception as e:
            raise ArtifactError(
                f"{self.path}: OpenVINO cannot compile this model at batch {batch} "
                f"({first_line(e)}); re-export it with `ddpm-export CKPT`, or use --backend ort",
                field="path",
            ) from None
        ran = compiled.get_property("INFERENCE_PRECISION_HINT")
        ran = getattr(ran, "get_type_name", lambda: str(ran))()  # an ov.Type: "f32", "bf16"
        if ran != PRECISIONS[self.precision][0]:
            # The plugin falls back silently when it cannot honour the hint.
            raise BackendError(
                f"OpenVINO compiled {self.path.name} for {ran}, not the {self.precision} asked "
                f"for; this CPU cannot run {self.precision}: drop --precision", field="precision",
            )
        return _Compiled(compiled)

    def parts(self, batch: int) -> list[tuple[int, int, tuple[int, int]]]:
        """How a model batch runs: (lo, hi, (threads, chunk batch)) per compiled model used."""
        workers = min(self.threads, batch) if self.split else 1
        if workers <= 1:
            return [(0, batch, (self.threads, batch))]
        bounds = [batch * i // workers for i in range(workers + 1)]  # near-equal contiguous chunks
        return [(lo, hi, (1, hi - lo)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def _get(self, key: tuple[int, int]) -> _Compiled:
        with self._lock:
            if self._closed:
                raise BackendError(f"{self.path}: this engine was closed; open the model again")
            c = self._compiled.get(key)
            if c is not None:
                self._compiled.move_to_end(key)
                return c
        c = self._compile(key)  # outside the lock: compiling takes ~a second
        with self._lock:
            c = self._compiled.setdefault(key, c)
            self._compiled.move_to_end(key)
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)  # borrowed requests keep their model alive
        return c

    def run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        names = self.contract.input_names
        x, t = np.ascontiguousarray(x, np.float32), np.asarray(t, np.int64)
        y = None if y is None else np.asarray(y, np.int64)
        calls = []
        for lo, hi, key in self.parts(int(x.shape[0])):
            feeds = {names[0]: x[lo:hi], names[1]: t[lo:hi]}
            if y is not None:
                feeds[names[2]] = y[lo:hi]
            calls.append((self._get(key), feeds))
        if len(calls) == 1:
            with BUDGET.take(self.threads):
                return calls[0][0].infer(calls[0][1])
        with BUDGET.take(len(calls)):
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="ddpm-ov")
                pool = self._pool
            futures = [pool.submit(c.infer, f) for c, f in calls[1:]]
            first = calls[0][0].infer(calls[0][1])  # this thread is one of the workers
            return np.concatenate([first, *(f.result() for f in futures)])

    __call__ = run

    def close(self) -> None:
        """Drop the compiled models; later calls raise BackendError."""
        with self._lock:
            self._closed = True
            self._compiled.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def _after_fork_in_child(self) -> None:
        # Compiled models hold the parent's plugin threads: recompile in the child on demand.
        forksafe.inherited.append((self._compiled, self._pool))
        self._compiled = OrderedDict()
        self._pool = None
        self._lock = threading.Lock()
