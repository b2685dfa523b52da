"""ONNX Runtime on CUDA: x_t and the prediction stay on the GPU between steps.

Needs torch (CUDA build) and triton; :func:`available` says whether they are usable, and
:func:`ddpm.runtime.loops.select_loop` falls back to the host loop otherwise (ORT then
copies in and out each step). Each batch runs as:

    x_T  = randn(seed, INIT_STEP, offset) -> GPU once             (same draw as on CPU)
    loop: xin[:B] = xin[B:] = x_t; t.fill_(t_i)                    (device copies only)
          ORT run with IO binding: reads xin/t/y, writes `out` in place on the GPU
          x_t = fused_step(table, i, out, x_t, seed, offset, w)    (Triton: CFG + update +
                                                                    in-kernel Philox noise)

so nothing crosses PCIe per step except on ``trajectory=True``. With the engine's
``cuda_graph`` ORT captures the model run: that needs fixed buffer addresses and shapes,
so buffers then live on the loop, the last batch is padded to the full batch size, and
calls are serialised.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ddpm.noise import INIT_STEP, randn
from ddpm.runtime.loops.guidance import uses_cfg
from ddpm.runtime.loops.host import BatchResult, Check
from ddpm.runtime.plan import Plan


def available() -> bool:
    """torch with a CUDA device and triton are importable."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available()


class TritonLoop:
    """Device-resident loop over an ORT engine opened on device 'cuda'."""

    name = "triton"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.contract = engine.contract
        self.cuda_graph = bool(getattr(engine, "cuda_graph", False))
        self._lock = threading.Lock()
        self._buffers: dict[tuple, Any] = {}  # only used with cuda_graph (fixed addresses)

    def __call__(
        self, plan: Plan, start: int, stop: int, *, record: bool, tick: Callable[[], None],
        check: Check | None = None,
    ) -> BatchResult:
        if self.cuda_graph:
            with self._lock:  # one captured graph, one set of buffers
                return self._device_batch(plan, start, stop, record, tick, check)
        return self._device_batch(plan, start, stop, record, tick, check)

    def _buffers_for(self, mb: int, c_out: int) -> tuple[Any, Any, Any, Any, Any]:
        import torch

        key = (mb, c_out)
        if self.cuda_graph and key in self._buffers:
            return self._buffers[key]
        c, h, w = self.contract.image_shape
        dev = torch.device("cuda", 0)
        bufs = (
            torch.empty((mb, c, h, w), dtype=torch.float32, device=dev),  # model input x
            torch.empty((mb,), dtype=torch.int64, device=dev),  # timesteps
            torch.empty((mb,), dtype=torch.int64, device=dev),  # labels (unused if uncond)
            torch.empty((mb, c_out, h, w), dtype=torch.float32, device=dev),  # prediction
        )
        binding = self.engine.session.io_binding()
        names = self.contract.input_names
        for name, buf in zip(names, bufs[: len(names)], strict=True):
            dtype = np.float32 if buf.dtype == torch.float32 else np.int64
            binding.bind_input(name, "cuda", 0, dtype, list(buf.shape), buf.data_ptr())
        out = bufs[3]
        output = self.engine.session.get_outputs()[0].name
        binding.bind_output(output, "cuda", 0, np.float32, list(out.shape), out.data_ptr())
        entry = (*bufs, binding)
        if self.cuda_graph:
            self._buffers[key] = entry
        return entry

    def _device_batch(
        self, plan: Plan, start: int, stop: int, record: bool, tick: Callable[[], None], check: Check | None
    ) -> BatchResult:
        import torch

        from ddpm.kernels import fused_step

        table, c_shape = plan.table, self.contract.image_shape
        real = stop - start
        # With CUDA graphs every batch must have the captured shape: pad with extra samples
        # (their noise is just further counters) and drop them at the end.
        b = plan.batch_size if self.cuda_graph else real
        offset = start * math.prod(c_shape)
        cfg = uses_cfg(plan.labels, plan.guidance)
        mb = 2 * b if cfg else b
        xin, tin, yin, out, binding = self._buffers_for(mb, c_shape[0])
        x = torch.from_numpy(randn((b, *c_shape), seed=plan.seed, step=INIT_STEP, offset=offset)).to(xin.device)
        if plan.labels is not None:
            y = np.resize(plan.labels[start:stop], b)  # pads by repeating; padded rows are dropped
            if cfg:
                y = np.concatenate([y, np.full(b, plan.null_label, np.int64)])
            yin.copy_(torch.from_numpy(y))
        xts: list[np.ndarray] = []
        x0s: list[np.ndarray] = []
        session = self.engine.session
        for i, t in enumerate(table.timesteps):
            if check is not None:
                check()
            xin[:b].copy_(x)
            if cfg:
                xin[b:].copy_(x)
            tin.fill_(int(t))
            torch.cuda.current_stream().synchronize()  # ORT runs on its own stream
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            x_prev, x0 = fused_step(
                table, i, out, x, seed=plan.seed, noise_offset=offset,
                guidance_scale=plan.guidance if cfg else None, return_x0=record,
            )
            if record:
                xts.append(x[:real].cpu().numpy())
                x0s.append(x0[:real].cpu().numpy())
            x = x_prev
            tick()
        return x[:real].cpu().numpy(), xts, x0s
