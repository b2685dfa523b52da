"""The Triton loop (``--update triton``): model.onnx on ORT's CUDA EP, the fused Triton update,
both on one torch CUDA stream, x_t never leaving the GPU.

Needs torch (CUDA build) and triton, imported only when this loop is built. Per batch:

    x_T = randn(seed, INIT_STEP, offset) -> GPU once                   (the host loop's draw)
    timesteps (N, mb) int64 and labels (mb,) -> GPU once
    step i: xin[:B] = xin[B:] = x_t                                    (device copies)
            bind timestep row i (a pointer, no copy); ORT run writes `out` on the stream
            x_t, x0 = fused_step(table, i, out, x_t, seed, offset, w, prev_x0)
                      (CFG + update + in-kernel Philox noise, one kernel)

ORT runs on the torch stream (``user_compute_stream``) and is told not to synchronise after
each run (``disable_synchronize_execution_providers``), so stream order alone sequences the
model run and the update: no host synchronisation per step. The kernel is compiled for the
loop's dtype set on a tiny tensor when the loop is built and, for variants a request adds
(CFG, DPM++'s prev_x0, x̂0 output), before that request's first step; the seed is not
specialised on, so its value never triggers a recompile between steps.
CUDA graphs are the device loop's (``--loop device --cuda-graph``), not this one's.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ddpm.errors import BackendError
from ddpm.noise import initial_noise
from ddpm.runtime.loops.guidance import uses_cfg
from ddpm.runtime.loops.host import BatchResult, Check, finite_batch
from ddpm.runtime.plan import Plan


def available() -> bool:
    """torch with a CUDA device and triton are importable."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available()


class TritonLoop:
    """ORT CUDA model runs plus the fused Triton update on one torch stream."""

    name = "triton"

    def __init__(self, engine: Any) -> None:
        import os

        # Under TRITON_INTERPRET=1 an engine on the CPU runs this same loop on CPU tensors and
        # the CPU EP: how CI checks its bindings, CFG copies and noise without a GPU.
        self.on_gpu = engine.device == "cuda"
        if not (available() if self.on_gpu else os.environ.get("TRITON_INTERPRET") == "1"):
            raise BackendError(
                "--update triton needs torch (CUDA build) and triton with a visible GPU; install "
                '`pip install "ddpm-toolkit[gpu]"` or drop --update triton', field="loop",
            )
        import torch

        from ddpm.kernels import fused_step
        from ddpm.runtime.ort_session import create_session, import_ort
        from ddpm.schedule import step_table

        self.engine, self.contract = engine, engine.contract
        self.torch, self.fused_step = torch, fused_step
        self.dev = torch.device("cuda", 0) if self.on_gpu else torch.device("cpu")
        self.ort_device = "cuda" if self.on_gpu else "cpu"
        kw = dict(getattr(engine, "session_kw", None) or {})
        cuda_kw = {}
        if self.on_gpu:
            stream = torch.cuda.current_stream(self.dev)
            cuda_kw = {"tf32": bool(kw.get("tf32")), "cuda_options": {
                "has_user_compute_stream": "1", "user_compute_stream": str(stream.cuda_stream)}}
        self.session = create_session(engine.path, self.contract, device=self.ort_device,
                                      num_threads=getattr(engine, "threads", None), **cuda_kw)
        self.output = self.session.get_outputs()[0].name
        self.run_options = import_ort().RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._compiled: set[tuple] = set()
        self._warm(step_table(self.contract.schedule_config, 2, sampler="ddpm"), False, False)

    def _warm(self, table, cfg: bool, keep_x0: bool) -> None:
        """Compile, on a 16-element tensor, every kernel variant ``table`` will launch (noise
        or not, prev_x0 or not, for this CFG / x̂0 setting) that is not compiled yet, so no
        compilation happens between two steps. The seed is not specialised on."""
        torch = self.torch
        c_prev = getattr(table, "c_prev", None)
        c_prev = np.zeros(len(table)) if c_prev is None else c_prev
        variants = {(bool(table.sigma[i] != 0), bool(c_prev[i] != 0), i) for i in range(len(table))}
        todo = {}
        for noise, prev, i in sorted(variants):
            todo.setdefault((cfg, keep_x0, noise, prev), i)
        x = torch.zeros((1, 1, 1, 16), device=self.dev)
        out = torch.zeros((2 if cfg else 1, 1, 1, 16), device=self.dev)
        for key, i in todo.items():
            if key in self._compiled:
                continue
            extra = {"prev_x0": x} if key[3] else {}
            self.fused_step(table, i, out, x, seed=0, guidance_scale=1.0 if cfg else None,
                            return_x0=keep_x0, **extra)
            self._compiled.add(key)
        if self.on_gpu:
            torch.cuda.synchronize(self.dev)

    def _bind(self, binding, name: str, t) -> None:
        dtype = np.float32 if t.dtype == self.torch.float32 else np.int64
        binding.bind_input(name, self.ort_device, 0, dtype, list(t.shape), t.data_ptr())

    def __call__(
        self, plan: Plan, start: int, stop: int, *, record: bool, tick: Callable[[], None],
        check: Check | None = None,
    ) -> BatchResult:
        torch, c = self.torch, self.contract
        table = plan.table
        b = stop - start
        shape = (b, *c.image_shape)  # (B, C, H, W)
        offset = start * math.prod(c.image_shape)
        cfg = uses_cfg(plan.labels, plan.guidance)
        mb = 2 * b if cfg else b
        names = c.input_names
        kind = getattr(table, "init_noise", "gaussian")  # "uniform" for the mix sampler
        x_t = initial_noise(kind, shape, seed=plan.seed, offset=offset, value_range=c.value_range)
        x = torch.from_numpy(x_t).to(self.dev)
        xin = torch.empty((mb, *c.image_shape), device=self.dev) if cfg else x
        ts = torch.from_numpy(np.repeat(np.asarray(table.timesteps, np.int64)[:, None], mb, 1)).to(self.dev)
        out = torch.empty((mb, *c.image_shape), device=self.dev)
        binding = self.session.io_binding()
        binding.bind_output(self.output, self.ort_device, 0, np.float32, list(out.shape), out.data_ptr())
        if c.conditional:
            y = plan.labels[start:stop]
            if cfg:
                y = np.concatenate([y, np.full(b, plan.null_label, np.int64)])
            self._bind(binding, names[2], torch.from_numpy(np.ascontiguousarray(y, np.int64)).to(self.dev))
        xts: list[np.ndarray] = []
        x0s: list[np.ndarray] = []
        x0 = None  # previous step's x̂0 (multistep samplers)
        multistep = bool(getattr(table, "multistep", False))
        keep_x0 = record or multistep
        self._warm(table, cfg, keep_x0)  # before the first step: no compile between steps
        for i in range(len(table)):
            if check is not None:
                check()
            if cfg:
                xin[:b].copy_(x)
                xin[b:].copy_(x)
            self._bind(binding, names[0], xin if cfg else x)
            self._bind(binding, names[1], ts[i])
            self.session.run_with_iobinding(binding, self.run_options)
            prev = {"prev_x0": x0} if multistep else {}
            x_prev, x0 = self.fused_step(
                table, i, out, x, seed=plan.seed, noise_offset=offset,
                guidance_scale=plan.guidance if cfg else None, return_x0=keep_x0, **prev,
            )
            if record:
                xts.append(x.cpu().numpy())
                x0s.append(x0.cpu().numpy())
            x = x_prev
            if not cfg:
                xin = x
            tick()
        return finite_batch(x.cpu().numpy(), len(table.timesteps), "Triton"), xts, x0s
