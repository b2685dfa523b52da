"""model.onnx on ONNX Runtime (numpy + onnxruntime only): the default engine.

A diffusion loop calls one graph at one batch size hundreds of times, so on the CPU each
batch size gets its own session with the batch dimension fixed (ORT then folds the
exporter's Shape/Gather/Concat chains away), and a batch of B >= 2 is split across the
cores: ``threads`` contiguous chunks, each run by a single-threaded session, concurrently
(ORT releases the GIL). A UNet graph is ~700 small ops; one multi-threaded run pays a
thread hand-off per op, while the split runs pay none (figures in docs/cpu-engines.md).
A single image runs on one session with all threads. Each image's arithmetic does not
depend on the split, so neither do the samples (tests pin it bit for bit).

Sessions live in a :class:`~ddpm.runtime.engines.sessions.SessionCache`; :meth:`hold`
reserves the sessions of one batch size for a whole batch of a request. Every model call
takes its compute threads from the process-wide :data:`ddpm.runtime.threads.BUDGET`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

import ddpm.runtime.forksafe as forksafe
from ddpm import artifact
from ddpm.errors import ArtifactError, BackendError, ConfigError
from ddpm.runtime.engines.base import RunFn
from ddpm.runtime.engines.kinds import check_kind
from ddpm.runtime.engines.sessions import SessionCache
from ddpm.runtime.engines.signature import check_signature, ort_ports
from ddpm.runtime.ort_session import create_session, physical_cores
from ddpm.runtime.threads import BUDGET

#: (lo, hi, key): samples [lo, hi) of a model batch run on the session ``key``
#: ((threads, batch) of a fixed-batch CPU session, or None for the dynamic-batch one).
Part = tuple[int, int, "tuple[int, int] | None"]


#: Default pad_slack: a batch may run on a session up to a third larger (e.g. 6 on 8).
PAD_SLACK = 4 / 3


def _pad(a: np.ndarray | None, lo: int, hi: int, key: tuple[int, int] | None) -> np.ndarray | None:
    """Rows [lo, hi) of ``a``, repeated-last-row padded to the session's batch ``key[1]``.
    Each image's arithmetic does not depend on the other rows, so padding changes none."""
    if a is None:
        return None
    rows = a[lo:hi]
    extra = 0 if key is None else key[1] - (hi - lo)
    return np.concatenate([rows, np.repeat(rows[-1:], extra, axis=0)]) if extra > 0 else rows


def _rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class OrtEngine:
    """model.onnx: tuned fixed-batch CPU sessions, or one CUDA session (see the module doc).

    ``max_sessions`` / ``max_session_bytes`` bound the idle sessions kept (see
    :mod:`ddpm.runtime.engines.sessions` for the policy). ``pad_slack``: a chunk of c
    samples runs on an already built session for up to ``c * pad_slack`` samples (padded,
    extra rows dropped) rather than building one for exactly c; 1 turns padding off.
    """

    name = "ort"
    default_file = "model.onnx"
    written_by = "ddpm-export"
    compute_precisions = ("fp32",)
    file_precisions = ("fp32", "int8", "fp16")  # model_int8.onnx / model_fp16.onnx

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        *,
        num_threads: int | None = None,
        spin: bool = False,
        tensorrt: bool = False,
        cuda_graph: bool = False,
        max_sessions: int | None = None,
        max_session_bytes: int | None = None,
        pad_slack: float = PAD_SLACK,
    ) -> None:
        check_kind(path, "ort", self.default_file)
        self.contract = artifact.read(path)
        if self.contract.graph != "model":
            raise ArtifactError(
                f"{path}: is a whole-step graph ({self.contract.graph!r}); the sampler runs "
                "the plain model graph: pass the model.onnx exported without --with-step"
            )
        self.path = Path(path)
        self.device = device
        self.cuda_graph = cuda_graph
        self.threads = max(1, int(num_threads or physical_cores()))
        if not isinstance(pad_slack, (int, float)) or not 1.0 <= pad_slack <= 4.0:
            raise ConfigError(f"pad_slack must be a number in 1..4, got {pad_slack!r}", field="pad_slack")
        self.pad_slack = float(pad_slack)
        self._session_kw: dict[str, Any] = dict(device=device, spin=spin, tensorrt=tensorrt, cuda_graph=cuda_graph)
        # The dynamic-batch session: checks the file once, and serves non-CPU devices.
        self._session: Any = self._open(None)
        check_signature(self.path, self.contract, ort_ports(self._session.get_inputs()),
                        ort_ports(self._session.get_outputs()))
        self._names = self.contract.input_names
        self._output = self._session.get_outputs()[0].name
        dim = self._session.get_inputs()[0].shape[0]
        self._batch_dim = dim if isinstance(dim, str) and dim else None
        self._split = device == "cpu" and self.threads > 1
        self._weights = self.path.stat().st_size  # each session holds its own copy of the weights
        self._measured: dict[tuple[int, int], int] = {}
        self.sessions = SessionCache(
            self._build, lambda key: self._measured.pop(key, 2 * self._weights),
            max_sessions=max_sessions, max_bytes=max_session_bytes,
        )
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        forksafe.register(self)

    def _open(self, key: tuple[int, int] | None) -> Any:
        if key is None:
            return create_session(self.path, self.contract, num_threads=self.threads, **self._session_kw)
        threads, batch = key
        return create_session(
            self.path, self.contract, num_threads=threads,
            fixed_dims={self._batch_dim: batch}, **self._session_kw,
        )

    def _build(self, key: tuple[int, int]) -> Any:
        """A fixed-batch session, run once on zeros so its arena has grown to a run's size;
        the process's resident-memory growth meanwhile is its size for the byte budget
        (concurrent builds inflate each other's figure: the budget errs on the safe side)."""
        before = _rss_bytes()
        sess = self._open(key)
        b = key[1]
        x = np.zeros((b, *self.contract.image_shape), np.float32)
        zeros = np.zeros(b, np.int64)
        with BUDGET.take(key[0]):
            self._run1(sess, x, zeros, zeros if len(self._names) > 2 else None)
        after = _rss_bytes()
        if before is not None and after is not None:
            self._measured[key] = max(after - before, self._weights)
        return sess

    @property
    def session(self) -> Any:
        """The dynamic-batch session (the CUDA session on device 'cuda')."""
        with self._lock:
            self._check_open()
            if self._session is None:  # dropped in a forked child
                self._session = self._open(None)
            return self._session

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.path}: this engine was closed; open the model again")

    def parts(self, batch: int) -> list[Part]:
        """How a model batch of ``batch`` samples is run: which sessions, which rows."""
        if self.device != "cpu" or self._batch_dim is None:
            return [(0, batch, None)]
        workers = min(self.threads, batch) if self._split else 1
        if workers <= 1:
            return [(0, batch, (self.threads, batch))]
        bounds = [batch * i // workers for i in range(workers + 1)]  # near-equal contiguous chunks
        return [(lo, hi, (1, hi - lo)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    @contextlib.contextmanager
    def hold(self, batch: int) -> Iterator[RunFn]:
        """A run function for model batches of exactly ``batch``, its sessions held meanwhile."""
        self._check_open()
        parts = [(lo, hi, self._reuse(k)) for lo, hi, k in self.parts(batch)]
        keys = [k for _, _, k in parts if k is not None]
        with self.sessions.hold(keys) as held:
            if any(k is None for _, _, k in parts):
                held[None] = self.session

            def run(x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
                if x.shape[0] != batch:
                    raise BackendError(f"sessions held for batch {batch}, called with {x.shape[0]}")
                return self._run_parts(parts, held, x, t, y)

            yield run

    def _reuse(self, key: tuple[int, int] | None) -> tuple[int, int] | None:
        """``key``, or the smallest built session of the same threads that fits its batch
        within ``pad_slack`` (exact first): padding a few rows for the steps of one batch
        costs less than building (and keeping) one more session."""
        if key is None or self.pad_slack <= 1.0:
            return key
        threads, c = key
        fits = [k for k in self.sessions.keys() if k[0] == threads and c <= k[1] <= c * self.pad_slack]
        return min(fits, key=lambda k: k[1], default=key)

    def run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        with self.hold(x.shape[0]) as run:
            return run(x, t, y)

    def _run1(self, sess: Any, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        feeds = {self._names[0]: x, self._names[1]: t}
        if y is not None:
            feeds[self._names[2]] = y
        return sess.run([self._output], feeds)[0]

    def _run_parts(self, parts: list[Part], held: dict, x: np.ndarray, t: np.ndarray, y: np.ndarray | None):
        calls = [
            (held[k], *(_pad(a, lo, hi, k) for a in (x, t, y))) for lo, hi, k in parts
        ]
        threads = len(parts) if len(parts) > 1 else (parts[0][2] or (self.threads, 0))[0]
        with BUDGET.take(threads):
            if len(calls) == 1:
                outs = [self._run1(*calls[0])]
            else:
                futures = self._submit(calls[1:])
                outs = [self._run1(*calls[0])]  # this thread is one of the workers
                outs += [f.result() if f is not None else self._run1(*c) for f, c in zip(futures, calls[1:], strict=True)]
            outs = [o[: hi - lo] for o, (lo, hi, _) in zip(outs, parts, strict=True)]  # drop padding
            return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _submit(self, calls: list) -> list:
        """Futures for ``calls`` on the engine's pool; None where the pool cannot take work
        (interpreter shutdown refuses new futures): those run inline in the caller."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="ddpm-ort")
            pool = self._pool
        futures: list = []
        for c in calls:
            try:
                futures.append(pool.submit(self._run1, *c))
            except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
                futures.append(None)
        return futures

    def close(self) -> None:
        """Drop the sessions and the pool; later calls raise BackendError."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            self._session = None
        self.sessions.clear()
        if pool is not None:
            pool.shutdown(wait=False)

    def _after_fork_in_child(self) -> None:
        forksafe.inherited.append((self._pool, self._session))
        self._pool = None
        self._session = None
        self._lock = threading.Lock()
