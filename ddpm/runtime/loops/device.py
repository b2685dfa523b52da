"""The device loop: the whole-step graph run with IO binding, x_t never leaving the device.

numpy + onnxruntime only (no torch). Per batch, on the session's device (CPU EP or CUDA EP):

    OrtValues, allocated once:  x[2], step[2], prev_x0[2]  (ping-pong pairs)
                                noise (S, B, C, H, W), table (N, K), timesteps (N,), labels, w
    binding 0: x[0], step[0], prev_x0[0] ──► x_prev → x[1], step_next → step[1], x0 → prev_x0[1]
    binding 1: the same with 0 and 1 swapped
    step i:    run_with_iobinding(binding[i % 2])        (one ORT run; the host writes nothing)

The graph (:mod:`ddpm.export.step_graph`) advances the step counter itself and gathers
its noise as ``noise[step mod S]``: all N steps' noise is uploaded once per batch when it fits
:data:`NOISE_BYTES`, else in chunks of S steps, each uploaded when the previous one is used
up. Nothing is copied back until the end (or per step with ``trajectory=True``). Noise,
x_T and guidance are the host loop's (same Philox counters, same CFG formula), so images
match the host loop within fp32 rounding.

With ``cuda_graph`` the session is built with every dimension fixed, the last batch is
padded to the full batch size, buffers live on the loop (fixed addresses), each of the two
bindings has its own ``gpu_graph_id``, the capture (ORT's warm-up runs) happens when the
buffers are made, before the first timed step, and runs skip the per-run device sync
(``disable_synchronize_execution_providers``) until the result is read.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ddpm import artifact
from ddpm.errors import ArtifactError, BackendError, ConfigError
from ddpm.noise import initial_noise, randn
from ddpm.runtime.loops.guidance import uses_cfg
from ddpm.runtime.loops.host import BatchResult, Check, finite_batch
from ddpm.runtime.plan import Plan
from ddpm.schedule import TABLE_COLUMNS

#: Upper bound on the noise buffer per batch; beyond it noise is uploaded in step chunks.
NOISE_BYTES = 256 << 20
STEP_GRAPH_VERSION = 2
#: Sessions (one per fixed shape set) kept per loop; each holds a copy of the weights.
MAX_SESSIONS = 4
EXPORT = "`ddpm-export CKPT --with-step` (it writes model_step.onnx beside model.onnx)"
HINT = f"write it with {EXPORT}, or use loop='host'"


def step_graph_path(model_path: str | Path) -> Path:
    """``<stem>_step.onnx`` beside the model if present, else ``model_step.onnx`` there (the
    one step graph serves model.onnx and its optimized / int8 variants' folder)."""
    p = Path(model_path)
    own = p.with_name(f"{p.stem}_step.onnx")
    return own if own.is_file() else p.with_name("model_step.onnx")


def open_step_contract(model_path: Path, model: artifact.Contract) -> tuple[Path, artifact.Contract]:
    """The step graph of ``model_path`` and its contract, checked against the model's."""
    path = step_graph_path(model_path)
    if not path.is_file():
        raise ArtifactError(f"loop='device' needs the step graph {str(path)!r}, which is missing; {HINT}",
                            field="loop")
    c = artifact.read(path)
    info = c.step_graph or {}
    if c.graph != "step" or info.get("version") != STEP_GRAPH_VERSION:
        raise ArtifactError(
            f"{path}: is a step graph of version {info.get('version', 1)}, the device loop needs "
            f"version {STEP_GRAPH_VERSION} (table and noise as inputs); re-export with {EXPORT}",
            field="loop",
        )
    if tuple(info.get("table_columns", ())) != TABLE_COLUMNS:
        raise ArtifactError(
            f"{path}: step graph table columns {info.get('table_columns')} differ from this "
            f"ddpm's {list(TABLE_COLUMNS)}; re-export with {EXPORT}", field="loop",
        )
    same = (c.betas_sha256, c.model_config, c.image_shape, c.num_classes) == (
        model.betas_sha256, model.model_config, model.image_shape, model.num_classes)
    if not same:
        raise ArtifactError(
            f"{path}: step graph was exported from another model than {model_path.name} "
            f"(schedule, config or image shape differ); re-export with {EXPORT}",
            field="loop",
        )
    return path, c


class _Buffers:
    """One batch's OrtValues and its two IO bindings (see the module docstring)."""

    def __init__(self, ort: Any, sess: Any, dev: str, key: tuple, conditional: bool) -> None:
        b, mb, n, s, image = key
        f32, i64 = np.float32, np.int64
        alloc = lambda shape, dt: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dt, dev, 0)  # noqa: E731
        self.x = [alloc((b, *image), f32) for _ in range(2)]
        self.step = [alloc((1,), i64) for _ in range(2)]
        self.prev = [alloc((b, *image), f32) for _ in range(2)]
        self.noise = alloc((s, b, *image), f32)
        self.table = alloc((n, len(TABLE_COLUMNS)), f32)
        self.timesteps = alloc((n,), i64)
        self.labels = alloc((mb,), i64) if conditional else None
        self.guidance = alloc((1,), f32) if conditional else None
        self.bindings = []
        for src in (0, 1):
            dst = 1 - src
            bind = sess.io_binding()
            feeds = {"x_t": self.x[src], "step": self.step[src], "prev_x0": self.prev[src],
                     "noise": self.noise, "table": self.table, "timesteps": self.timesteps}
            if conditional:
                feeds |= {"class_labels": self.labels, "guidance": self.guidance}
            for name, value in feeds.items():
                bind.bind_ortvalue_input(name, value)
            for name, value in (("x_prev", self.x[dst]), ("x0", self.prev[dst]),
                                ("step_next", self.step[dst])):
                bind.bind_ortvalue_output(name, value)
            self.bindings.append(bind)


class DeviceLoop:
    """Runs each batch of a plan as N runs of the step graph on the engine's device."""

    name = "device"

    def __init__(self, engine: Any, *, noise_bytes: int = NOISE_BYTES) -> None:
        if getattr(engine, "name", None) != "ort":
            raise BackendError(
                f"--loop device runs the ONNX step graph on onnxruntime and needs --backend ort, "
                f"got {getattr(engine, 'name', engine)!r}; pass --backend ort or --loop host",
                field="loop",
            )
        from ddpm.runtime.ort_session import import_ort

        self.ort = import_ort()
        self.engine = engine
        self.device: str = engine.device
        self.path, self.contract = open_step_contract(Path(engine.path), engine.contract)
        kw = dict(getattr(engine, "session_kw", None) or getattr(engine, "_session_kw", {}))
        self.cuda_graph = bool(kw.get("cuda_graph", False))
        self._session_kw = {k: kw[k] for k in ("tensorrt", "cuda_graph", "tf32", "spin") if k in kw}
        self.threads = getattr(engine, "threads", None)
        self.noise_bytes = int(noise_bytes)
        self._sessions: OrderedDict[tuple, Any] = OrderedDict()
        self._buffers: dict[tuple, _Buffers] = {}  # cuda_graph only: addresses must not move
        self._lock = threading.Lock()
        self._serial = threading.Lock()
        self._graph_ids = 0

    # -- sessions ----------------------------------------------------------------------
    def _open_session(self, key: tuple) -> Any:
        from ddpm.runtime.ort_session import create_session

        b, mb, n, s, _ = key
        dims = {"batch": b, "model_batch": mb, "steps": n, "noise_steps": s}
        return create_session(
            self.path, self.contract, device=self.device, num_threads=self.threads,
            fixed_dims=dims, strict_device=self.device != "cpu", **self._session_kw,
        )

    def _session(self, key: tuple) -> Any:
        with self._lock:
            sess = self._sessions.pop(key, None)
            if sess is None:
                sess = self._open_session(key)
            self._sessions[key] = sess  # most recent last
            while len(self._sessions) > MAX_SESSIONS:
                old, _ = self._sessions.popitem(last=False)
                self._buffers.pop(old, None)
            return sess

    def _run_options(self) -> list[Any]:
        opts = []
        for _ in range(2):
            ro = self.ort.RunOptions()
            if self.cuda_graph:
                with self._lock:
                    self._graph_ids += 1  # one captured graph per binding (distinct buffers)
                    ro.add_run_config_entry("gpu_graph_id", str(self._graph_ids))
                ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
            opts.append(ro)
        return opts

    # -- one batch ---------------------------------------------------------------------
    def noise_steps(self, plan: Plan, batch: int) -> int:
        """Steps of noise held on the device at once: all N when they fit :data:`noise_bytes`;
        1 (a zero buffer) for a sampler without noise."""
        if not np.any(plan.table.sigma != 0):
            return 1
        per_step = batch * math.prod(self.contract.image_shape) * 4
        return max(1, min(plan.steps, self.noise_bytes // per_step))

    def _noise_chunk(self, plan: Plan, shape: tuple, offset: int, first: int, s: int) -> np.ndarray:
        chunk = np.zeros((s, *shape), np.float32)  # steps with sigma 0 (and past N) stay zero
        for j, i in enumerate(range(first, min(first + s, plan.steps))):
            if plan.table.sigma[i] != 0:
                chunk[j] = randn(shape, seed=plan.seed, step=i, offset=offset)
        return chunk

    def __call__(
        self, plan: Plan, start: int, stop: int, *, record: bool, tick: Callable[[], None],
        check: Check | None = None,
    ) -> BatchResult:
        if getattr(plan.table, "thresholding", False):
            raise ConfigError(
                "dynamic thresholding (a per-sample quantile of x0) has no step-graph form; "
                "use loop='host' for this model", field="loop",
            )
        if self.cuda_graph:
            with self._serial:  # captured graphs replay the loop's fixed buffers
                return self._batch(plan, start, stop, record, tick, check)
        return self._batch(plan, start, stop, record, tick, check)

    def _batch(self, plan: Plan, start: int, stop: int, record: bool, tick: Callable[[], None],
               check: Check | None) -> BatchResult:
        c = self.contract
        real = stop - start
        b = plan.batch_size if self.cuda_graph else real  # captured graphs need one shape
        shape = (b, *c.image_shape)  # (B, C, H, W)
        offset = start * math.prod(c.image_shape)
        cfg = uses_cfg(plan.labels, plan.guidance)
        mb = 2 * b if cfg else b
        n, s = plan.steps, self.noise_steps(plan, b)
        key = (b, mb, n, s, tuple(c.image_shape))
        sess = self._session(key)
        fresh = key not in self._buffers
        bufs = self._buffers[key] if not fresh else _Buffers(self.ort, sess, self._dev(), key, c.conditional)
        if self.cuda_graph and fresh:
            self._buffers[key] = bufs
            bufs.run_options = self._run_options()
        elif not self.cuda_graph:
            bufs.run_options = [None, None]
        x_host = self._load(bufs, plan, shape, offset, start, stop, cfg, s)[:real]
        if self.cuda_graph and fresh:
            self._capture(sess, bufs)  # ORT's warm-up + capture runs, then reset the state
            self._load(bufs, plan, shape, offset, start, stop, cfg, s)
        xts: list[np.ndarray] = []
        x0s: list[np.ndarray] = []
        for i in range(n):
            if check is not None:
                check()
            if i and s < n and i % s == 0:  # this chunk is used up: upload the next one
                bufs.bindings[(i - 1) % 2].synchronize_outputs()
                bufs.noise.update_inplace(self._noise_chunk(plan, shape, offset, i, s))
            bind = bufs.bindings[i % 2]
            sess.run_with_iobinding(bind, bufs.run_options[i % 2])
            if record:
                bind.synchronize_outputs()
                out = bind.copy_outputs_to_cpu()  # x_prev, x0, step_next
                xts.append(x_host)
                x0s.append(out[1][:real])
                x_host = out[0][:real]
            tick()
        last = bufs.bindings[(n - 1) % 2]
        last.synchronize_outputs()
        x = finite_batch(last.copy_outputs_to_cpu()[0][:real], n, "device")
        return x, xts, x0s

    def _dev(self) -> str:
        return "cuda" if self.device == "cuda" else "cpu"

    def _load(self, bufs: _Buffers, plan: Plan, shape: tuple, offset: int, start: int, stop: int,
              cfg: bool, s: int) -> np.ndarray:
        """Upload one batch's inputs (x_T, counter 0, zero prev_x0, table, first noise
        chunk, labels); returns the host copy of x_T."""
        kind = getattr(plan.table, "init_noise", "gaussian")  # "uniform" for the mix sampler
        x_t = initial_noise(kind, shape, seed=plan.seed, offset=offset,
                            value_range=self.contract.value_range)
        bufs.x[0].update_inplace(x_t)
        bufs.step[0].update_inplace(np.zeros(1, np.int64))
        bufs.prev[0].update_inplace(np.zeros(shape, np.float32))  # step 0 has c_prev = 0
        bufs.table.update_inplace(plan.table.as_array(np.float32))
        bufs.timesteps.update_inplace(np.ascontiguousarray(plan.table.timesteps, np.int64))
        bufs.noise.update_inplace(self._noise_chunk(plan, shape, offset, 0, s))
        if bufs.labels is not None:
            b = shape[0]
            y = np.resize(plan.labels[start:stop], b)  # cuda_graph pads by repeating; dropped later
            if cfg:
                y = np.concatenate([y, np.full(b, plan.null_label, np.int64)])
            bufs.labels.update_inplace(y.astype(np.int64))
            bufs.guidance.update_inplace(np.asarray([plan.guidance], np.float32))
        return x_t

    def _capture(self, sess: Any, bufs: _Buffers) -> None:
        """Run each binding until ORT has captured its graph (it needs a few warm-up runs).

        Each run starts from step 0 (counter rewritten in place), so a table shorter than
        the warm-up never gathers past its end; :meth:`_load` then resets the state."""
        zero = np.zeros(1, np.int64)
        for _ in range(3):
            for j in (0, 1):
                bufs.bindings[1 - j].synchronize_outputs()
                bufs.step[j].update_inplace(zero)
                sess.run_with_iobinding(bufs.bindings[j], bufs.run_options[j])
        bufs.bindings[1].synchronize_outputs()

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._buffers.clear()

