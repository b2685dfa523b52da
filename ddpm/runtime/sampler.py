"""The embeddable sampler: ``Sampler.from_path(path).sample(n)`` -> uint8 images.

A Sampler pairs an engine (:mod:`ddpm.runtime.engines`: runs the network) with a loop
(:mod:`ddpm.runtime.loops`: noise, guidance and the update around it). After construction
it holds only immutable state plus the engine's caches, so any number of threads (or
asyncio tasks, via :meth:`Sampler.asample`) may sample from one instance at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.artifact import Contract
from ddpm.errors import ArtifactError, BackendError, Cancelled
from ddpm.images import encode_png, make_grid, to_uint8
from ddpm.runtime.assets import default_model_path
from ddpm.runtime.engines import Engine, open_engine
from ddpm.runtime.loops import check_backend, select_loop
from ddpm.runtime.loops.guidance import uses_cfg
from ddpm.runtime.plan import Plan, make_plan

#: progress(done_model_steps, total_model_steps), called after every loop step.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SampleResult:
    """Output of :meth:`Sampler.sample`.

    ``images`` uint8 (N, H, W, C); ``samples`` float32 (N, C, H, W) in the contract's value
    range; with ``trajectory=True``, ``xt[i]`` is the input x_t of loop step i (``xt[0]`` is
    x_T) and ``x0[i]`` that step's predicted x_0, both (steps, N, C, H, W) float32.
    """

    images: np.ndarray
    samples: np.ndarray
    labels: np.ndarray | None
    timesteps: np.ndarray
    seconds: float
    xt: np.ndarray | None = None
    x0: np.ndarray | None = None

    def png_bytes(self, grid: bool = True, scale: int = 1) -> bytes | list[bytes]:
        """PNG file contents in memory: one grid of all images, or one PNG per image;
        ``scale`` enlarges by pixel repetition (nearest neighbour)."""
        if grid:
            return encode_png(make_grid(self.images, scale=scale))
        return [encode_png(make_grid(img[None], pad=0, scale=scale)) for img in self.images]


def _stop_check(cancels: Sequence[threading.Event], deadline: float | None) -> Callable[[], None] | None:
    """A check run before every step: raises Cancelled once an event is set or past ``deadline``."""
    if not cancels and deadline is None:
        return None

    def check() -> None:
        if any(ev.is_set() for ev in cancels):
            raise Cancelled("sampling was cancelled by its cancel event", reason="cancelled")
        if deadline is not None and time.monotonic() >= deadline:
            raise Cancelled(
                f"sampling passed its deadline ({time.monotonic() - deadline:.3f} s ago); "
                "allow more time or request fewer steps/images", reason="deadline",
            )

    return check


class Sampler:
    """Samples an exported model. Build with :meth:`from_path`, :meth:`default` or
    :meth:`from_engine`; use as a context manager (or call :meth:`close`) to free sessions."""

    def __init__(self, engine: Engine, *, path: Path | None = None, loop: str | None = None) -> None:
        self.engine = engine
        self.contract: Contract = engine.contract
        c_out = self.contract.outputs[0].shape[1:2]
        if c_out and isinstance(c_out[0], int) and c_out[0] != self.contract.image_channels:
            # e.g. a learned-variance head (2C channels): the step tables assume fixed variance
            raise ArtifactError(
                f"{path}: the model predicts {c_out[0]} channels but samples have "
                f"{self.contract.image_channels}; only fixed-variance models can be sampled"
            )
        self.backend: str = engine.name
        self.device: str = engine.device
        self.path = path
        try:
            self._loop = select_loop(engine, loop)
        except BaseException:
            engine.close()  # a refused loop must not leak the engine's sessions
            raise
        self.loop: str = self._loop.name
        self._closed = False

    @classmethod
    def from_engine(cls, engine: Engine, *, loop: str | None = None) -> Sampler:
        """Wrap any object following :class:`ddpm.runtime.engines.base.Engine`."""
        return cls(engine, path=getattr(engine, "path", None), loop=loop)

    @classmethod
    def from_path(
        cls,
        path: str | Path | None = None,
        backend: str = "ort",
        device: str = "cpu",
        *,
        num_threads: int | None = None,
        loop: str | None = None,
        **options: Any,
    ) -> Sampler:
        """Open a model.onnx (``ort``), model.ts (``torchscript``) or ckpt.pt (``torch``).

        ``loop``: "host" (numpy step between model calls), "device" (the model_step.onnx
        graph with IO binding; ORT only) or "triton" (ORT CUDA + the fused Triton update);
        None: device on CUDA when the step graph is there, else host.

        ``path`` may be the file or the folder holding it; None means the bundled digits
        model. ``num_threads`` caps this Sampler's CPU threads (default: the physical cores;
        all Samplers together stay within :func:`ddpm.runtime.set_thread_budget`).
        ``options`` go to the engine: ``precision="int8"`` opens the model_int8.onnx beside
        ``path``; ``spin`` lets ORT's pool spin-wait (faster only on an idle machine);
        ``max_sessions`` / ``max_session_bytes`` bound the ORT session cache;
        ``tensorrt`` / ``cuda_graph`` / ``tf32`` are opt-in CUDA options; ``weights`` ("ema" or
        "model") picks the torch backend's weights.
        """
        check_backend(backend, loop)
        if path is None:
            path = default_model_path(backend)
        engine = open_engine(path, backend, device, num_threads=num_threads, **options)
        return cls(engine, path=Path(path), loop=loop)

    @classmethod
    def default(cls, **kw: Any) -> Sampler:
        """The bundled class-conditional digits model on ONNX Runtime."""
        return cls.from_path(None, **kw)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.contract.image_shape

    @property
    def num_classes(self) -> int:
        return self.contract.num_classes

    def plan(self, n: int, **request: Any) -> Plan:
        """Validate a request (same keywords as :meth:`sample`) without running it."""
        return make_plan(self.contract, n, **request)

    def sample(
        self,
        n: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        seed: int | None = None,
        labels: int | Sequence[int] | None = None,
        guidance: float | None = None,
        batch_size: int | None = None,
        trajectory: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        deadline: float | None = None,
    ) -> SampleResult:
        """Draw ``n`` images; an argument left None takes its value from :mod:`ddpm.defaults`.

        ``labels``: one class for all, one per sample, or None (a conditional model then
        cycles 0..K-1). ``guidance`` w: classifier-free guidance scale (1 = plain
        conditional). Bad input raises ConfigError (with ``.field``) before any work.
        ``cancel`` (set it from any thread) or ``deadline`` (a ``time.monotonic()`` value)
        stop the request before its next step with :class:`ddpm.errors.Cancelled`.
        """
        plan = self.plan(
            n, steps=steps, sampler=sampler, eta=eta, seed=seed, labels=labels,
            guidance=guidance, batch_size=batch_size,
        )
        return self.run(plan, trajectory=trajectory, progress=progress, cancel=cancel, deadline=deadline)

    async def asample(self, n: int | None = None, **kw: Any) -> SampleResult:
        """:meth:`sample` in a worker thread; cancelling the awaiting task stops the
        request before its next step (and waits for that, so its sessions are free)."""
        cancels = [threading.Event()]
        if kw.get("cancel") is not None:
            cancels.append(kw["cancel"])
        run_kw = {k: kw.pop(k) for k in ("trajectory", "progress", "deadline") if k in kw}
        kw.pop("cancel", None)
        plan = self.plan(n, **kw)  # bad input raises here, in the caller's task
        fut = asyncio.get_running_loop().run_in_executor(
            None, lambda: self._execute(plan, cancels=cancels, **run_kw)
        )
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancels[0].set()
            with contextlib.suppress(BaseException):
                await fut
            raise

    def run(
        self, plan: Plan, *, trajectory: bool = False, progress: Progress | None = None,
        cancel: threading.Event | None = None, deadline: float | None = None,
    ) -> SampleResult:
        """Execute a validated :class:`Plan` (see :meth:`plan`)."""
        return self._execute(
            plan, trajectory=trajectory, progress=progress,
            cancels=[] if cancel is None else [cancel], deadline=deadline,
        )

    def _execute(
        self, plan: Plan, *, trajectory: bool = False, progress: Progress | None = None,
        cancels: Sequence[threading.Event] = (), deadline: float | None = None,
    ) -> SampleResult:
        if self._closed:
            raise BackendError("this Sampler was closed; open the model again to sample")
        t0 = time.perf_counter()
        check = _stop_check(cancels, deadline)
        batches = plan.batches()
        total, done = len(batches) * plan.steps, 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        finals, xts, x0s = [], [], []
        for start, stop in batches:
            x, xt, x0 = self._loop(plan, start, stop, record=trajectory, tick=tick, check=check)
            finals.append(x)
            xts.append(xt)
            x0s.append(x0)
        samples = np.concatenate(finals).astype(np.float32, copy=False)
        return SampleResult(
            images=to_uint8(samples, self.contract.value_range),
            samples=samples,
            labels=plan.labels,
            timesteps=plan.table.timesteps.copy(),
            seconds=time.perf_counter() - t0,
            # (steps, N, C, H, W): batches are stacked per step, then joined on the sample axis
            xt=np.concatenate([np.stack(b) for b in xts], axis=1) if trajectory else None,
            x0=np.concatenate([np.stack(b) for b in x0s], axis=1) if trajectory else None,
        )

    def warmup(self, batch_sizes: Sequence[int] = (1,), guidance: float | None = None) -> Sampler:
        """Build (and run once) what requests of these batch sizes need, so the first real
        request pays no session set-up. ``guidance`` as in :meth:`sample`."""
        c = self.contract
        for b in batch_sizes:
            plan = self.plan(b, steps=1, guidance=guidance, batch_size=b)  # validates b
            mb = 2 * b if uses_cfg(plan.labels, plan.guidance) else b
            x = np.zeros((mb, *c.image_shape), np.float32)
            t = np.zeros(mb, np.int64)
            y = np.zeros(mb, np.int64) if c.conditional else None
            self.engine.run(x, t, y)
        return self

    def close(self) -> None:
        """Free the engine's sessions and threads; later calls raise BackendError."""
        self._closed = True
        close_loop = getattr(self._loop, "close", None)
        if close_loop is not None:
            close_loop()
        self.engine.close()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

