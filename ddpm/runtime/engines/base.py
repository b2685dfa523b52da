"""The engine protocol: what the sampling loops need from a network runner.

An engine maps one model call ``(x_t, t, y) -> output`` in numpy and carries the artifact
contract it was opened with. Engines hold no per-call state, so ``run`` may be called from
many threads at once. Everything else (noise, step tables, guidance, the loop) is shared
by all engines in :mod:`ddpm.runtime.loops`, which is what makes backend parity testable.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ddpm.artifact import Contract

#: One model call: float32 x (B, C, H, W), int64 t (B,), int64 y (B,) or None -> float32 output.
RunFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


@runtime_checkable
class Engine(Protocol):
    """A network runner built as ``XxxEngine(path, device="cpu", **options)``."""

    name: str  # registry key: "ort", "torchscript", "torch", ...
    contract: Contract
    device: str  # "cpu" | "cuda"
    path: Path

    def run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray: ...

    def close(self) -> None: ...


@runtime_checkable
class HoldsSessions(Protocol):
    """Optional capability: reserve the resources for one model batch size.

    The host loop calls ``hold(batch)`` once per batch of a request and runs every step of
    that batch through the returned function, so per-shape resources (e.g. fixed-batch ORT
    sessions) are looked up once per batch and cannot be evicted while the batch runs.
    """

    def hold(self, batch: int) -> AbstractContextManager[RunFn]: ...
