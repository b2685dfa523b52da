"""Sampling loops: how the steps of one batch are driven around an engine.

- ``host``  numpy noise and update between engine calls (:mod:`.host`); every engine.
- ``cuda``  x_t stays on the GPU, Triton fused update (:mod:`.cuda`); an ORT engine on
  device 'cuda' with torch + triton installed.

A loop is a callable ``loop(plan, start, stop, *, record, tick, check) -> BatchResult``.
The Sampler picks one explicitly with :func:`select_loop`; engines never choose.
"""

from __future__ import annotations

from ddpm.errors import BackendError
from ddpm.runtime.engines.base import Engine
from ddpm.runtime.loops.host import BatchResult, HostLoop

LOOPS = ("host", "cuda")

__all__ = ["LOOPS", "BatchResult", "HostLoop", "select_loop"]


def select_loop(engine: Engine, loop: str | None = None):
    """The loop ``loop`` over ``engine``; None picks the fastest one available for it."""
    if loop is not None and loop not in LOOPS:
        raise BackendError(f"unknown loop {loop!r}; expected one of {', '.join(LOOPS)}", field="loop")
    device_capable = engine.name == "ort" and engine.device == "cuda"
    if loop == "cuda" or (loop is None and device_capable):
        from ddpm.runtime.loops import cuda

        if device_capable and cuda.available():
            return cuda.CudaLoop(engine)
        if loop == "cuda":
            raise BackendError(
                "loop 'cuda' needs an ORT engine on device 'cuda' with torch (CUDA build) and "
                "triton installed; use loop 'host'", field="loop"
            )
    return HostLoop(engine)
