"""The embeddable sampler: ``Sampler.from_path(path).sample(n)`` -> uint8 images.

The loop (DDPM, Ho et al. 2020, Alg. 2; DDIM, Song et al. 2021, eq. 12) is the same for
every CPU backend: draw x_T, then for each row i of the :class:`ddpm.schedule.StepTable`
call the network, combine classifier-free guidance, and apply :func:`ddpm.schedule.step`
with the counter-based noise of :mod:`ddpm.noise`. Noise is keyed by (seed, step, offset)
with offset = global sample index * elements per sample, so splitting the request into
batches of any size never changes an image. A backend that keeps x_t on a device (CUDA)
supplies its own ``run_batch`` with the same inputs and contract.

A Sampler holds only immutable state after construction (contract, backend session), so
any number of threads may call :meth:`Sampler.sample` on one instance at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.artifact import Contract
from ddpm.errors import ArtifactError
from ddpm.images import to_uint8
from ddpm.noise import INIT_STEP, randn
from ddpm.runtime.assets import default_model_path
from ddpm.runtime.backends import load_backend
from ddpm.runtime.plan import Plan, make_plan
from ddpm.schedule import step

#: progress(done_model_steps, total_model_steps), called after every loop step.
Progress = Callable[[int, int], None]
Predict = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


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


def guided(predict: Predict, x: np.ndarray, t: np.ndarray, y: np.ndarray | None, plan: Plan) -> np.ndarray:
    """Network output with classifier-free guidance (Ho & Salimans 2022, eq. 6).

    Conditional and unconditional halves go through the model as one batch of 2B:
    out = out_u + w * (out_c - out_u). w == 1 is exactly the conditional output, so it
    skips the unconditional half.
    """
    if y is None or plan.guidance == 1.0:
        return predict(x, t, y)
    b = x.shape[0]
    null = np.full_like(y, plan.null_label)
    out = predict(np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([y, null]))
    out_c, out_u = out[:b], out[b:]  # (B, C, H, W) each
    return out_u + np.float32(plan.guidance) * (out_c - out_u)


def run_batch(
    predict: Predict,
    plan: Plan,
    image_shape: tuple[int, int, int],
    start: int,
    stop: int,
    *,
    record: bool,
    tick: Callable[[], None],
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Sample [start, stop) on the host; returns (x_0 batch, [x_t per step], [x̂0 per step])."""
    table = plan.table
    shape = (stop - start, *image_shape)  # (B, C, H, W)
    offset = start * math.prod(image_shape)  # global element index of this batch's first sample
    x = randn(shape, seed=plan.seed, step=INIT_STEP, offset=offset)
    y = None if plan.labels is None else plan.labels[start:stop]
    xts: list[np.ndarray] = []
    x0s: list[np.ndarray] = []
    x0 = None  # previous step's x̂0: the extra state of multistep samplers
    for i, t in enumerate(table.timesteps):
        tt = np.full(shape[0], t, dtype=np.int64)
        out = guided(predict, x, tt, y, plan)
        z = randn(shape, seed=plan.seed, step=i, offset=offset) if table.sigma[i] != 0 else None
        x_prev, x0 = step(table, i, out, x, z, prev_x0=x0)
        if record:
            xts.append(x)
            x0s.append(x0)
        x = x_prev
        tick()
    return x, xts, x0s


class Sampler:
    """Samples an exported model. Build with :meth:`from_path` or :meth:`default`."""

    def __init__(self, backend: Any, *, path: Path | None = None) -> None:
        self._backend = backend
        self.contract: Contract = backend.contract
        c_out = self.contract.outputs[0].shape[1:2]
        if c_out and isinstance(c_out[0], int) and c_out[0] != self.contract.image_channels:
            # e.g. a learned-variance head (2C channels): the step tables assume fixed variance
            raise ArtifactError(
                f"{path}: the model predicts {c_out[0]} channels but samples have "
                f"{self.contract.image_channels}; only fixed-variance models can be sampled"
            )
        self.backend: str = backend.name
        self.device: str = backend.device
        self.path = path

    @classmethod
    def from_path(
        cls,
        path: str | Path | None = None,
        backend: str = "ort",
        device: str = "cpu",
        *,
        num_threads: int | None = None,
        tensorrt: bool = False,
        cuda_graph: bool = False,
        weights: str = "ema",
        precision: str = "fp32",
        spin: bool = False,
    ) -> Sampler:
        """Open a model.onnx (``ort``), model.ts (``torchscript``) or ckpt.pt (``torch``).

        ``path`` may be the file or the folder holding it; None means the bundled digits
        model. ``num_threads`` overrides the CPU session's intra-op threads (default: the
        physical cores); ``tensorrt`` / ``cuda_graph`` are opt-in CUDA options;
        ``precision="int8"`` opens the model_int8.onnx beside ``path`` (ddpm-export --int8);
        ``spin`` lets ORT's CPU pool spin-wait (faster only on an otherwise idle machine).
        """
        if path is None:
            path = default_model_path(backend)
        b = load_backend(
            path, backend, device,
            num_threads=num_threads, tensorrt=tensorrt, cuda_graph=cuda_graph, weights=weights,
            precision=precision, spin=spin,
        )
        return cls(b, path=Path(path))

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

    def plan(self, n: int, **kw: Any) -> Plan:
        """Validate a request (same keywords as :meth:`sample`) without running it."""
        return make_plan(self.contract, n, **kw)

    def sample(
        self,
        n: int,
        steps: int = 50,
        sampler: str = "ddpm",
        eta: float = 0.0,
        seed: int = 0,
        labels: int | Sequence[int] | None = None,
        guidance: float = 1.0,
        batch_size: int | None = None,
        trajectory: bool = False,
        progress: Progress | None = None,
    ) -> SampleResult:
        """Draw ``n`` images. ``labels``: one class for all, one per sample, or None (a
        conditional model then cycles 0..K-1). ``guidance`` w: classifier-free guidance
        scale (1 = plain conditional). Raises ConfigError before any work on bad input."""
        plan = make_plan(
            self.contract, n, steps=steps, sampler=sampler, eta=eta, seed=seed,
            labels=labels, guidance=guidance, batch_size=batch_size,
        )
        return self.run(plan, trajectory=trajectory, progress=progress)

    def run(self, plan: Plan, *, trajectory: bool = False, progress: Progress | None = None) -> SampleResult:
        """Execute a validated :class:`Plan` (see :meth:`plan`)."""
        t0 = time.perf_counter()
        batches = plan.batches()
        total, done = len(batches) * plan.steps, 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        batch_fn = getattr(self._backend, "run_batch", None)
        finals, xts, x0s = [], [], []
        for start, stop in batches:
            if batch_fn is not None:
                x, xt, x0 = batch_fn(plan, start, stop, record=trajectory, tick=tick)
            else:
                x, xt, x0 = run_batch(
                    self._backend, plan, self.image_shape, start, stop, record=trajectory, tick=tick
                )
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
