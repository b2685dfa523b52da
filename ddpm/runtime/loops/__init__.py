"""Sampling loops: how the steps of one batch are driven around an engine.

- ``host``    numpy noise and update between engine calls (:mod:`.host`); every engine.
- ``device``  the whole-step graph run with IO binding, x_t kept on the session's device
  (:mod:`.device`); an ORT engine with model_step.onnx beside its model, CPU EP or CUDA EP.
- ``triton``  the model graph on ORT CUDA plus the fused Triton update on one torch stream
  (:mod:`.cuda`); device 'cuda' with torch + triton installed (``--update triton``).

Default: ``device`` for ORT on CUDA when the step graph is there, else ``host`` (on the CPU
EP the host loop is the faster one: docs/gpu.md has the measurement).

A loop is a callable ``loop(plan, start, stop, *, record, tick, check) -> BatchResult``.
The Sampler picks one explicitly with :func:`select_loop`; engines never choose.
"""

from __future__ import annotations

from ddpm.errors import BackendError
from ddpm.runtime.engines.base import Engine
from ddpm.runtime.loops.host import BatchResult, HostLoop

LOOPS = ("host", "device", "triton")

__all__ = ["LOOPS", "BatchResult", "HostLoop", "check_backend", "select_loop"]


def check_backend(backend: str, loop: str | None) -> None:
    """Refuse, before any model is opened, a loop the backend cannot drive."""
    if loop in ("device", "triton") and backend != "ort":
        what = "runs model_step.onnx" if loop == "device" else "(the Triton update) runs model.onnx"
        raise BackendError(
            f"loop={loop!r} {what} on onnxruntime and needs backend='ort', got backend={backend!r}; "
            "use backend='ort' or loop='host'", field="loop",
        )


def select_loop(engine: Engine, loop: str | None = None):
    """The loop ``loop`` over ``engine``; None picks the default (see the module docstring)."""
    if loop is not None and loop not in LOOPS:
        raise BackendError(f"unknown loop {loop!r}; expected one of {', '.join(LOOPS)}", field="loop")
    if getattr(engine, "cuda_graph", False) and loop in ("host", "triton"):
        raise BackendError(
            f"cuda_graph=True needs loop='device' (a captured graph replays fixed device buffers, "
            f"which the {loop} loop does not keep); drop cuda_graph=True or use loop='device'",
            field="cuda_graph",
        )
    if loop == "device" or (loop is None and engine.name == "ort" and engine.device == "cuda"):
        from ddpm.runtime.loops.device import DeviceLoop, step_graph_path

        if loop == "device" or step_graph_path(engine.path).is_file():
            return DeviceLoop(engine)
    if loop == "triton":
        from ddpm.runtime.loops import cuda

        if not (engine.name == "ort" and engine.device == "cuda"):
            raise BackendError(
                f"loop='triton' runs ORT's CUDA EP with the Triton update and needs backend='ort' "
                f"device='cuda', got {engine.name}/{engine.device}; use loop='host'",
                field="loop",
            )
        return cuda.TritonLoop(engine)
    if getattr(engine, "cuda_graph", False):
        from ddpm.runtime.loops.device import HINT, step_graph_path

        hint = HINT.replace(", or use loop='host'", ", or drop cuda_graph=True")
        raise BackendError(
            f"cuda_graph=True runs the device loop, which needs {str(step_graph_path(engine.path))!r}; "
            f"{hint}", field="cuda_graph",
        )
    return HostLoop(engine)
