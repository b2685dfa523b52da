"""The CUDA-only checks of ``gpu_check.py`` (each one's time box in :data:`CHECKS`).

Run by ``python benchmarks/gpu_check.py`` on a machine with a GPU; on a CPU machine the
driver reports each as ``"not run: no CUDA"``. Every check takes the driver's context
(``ctx["model"]``: the bundled model with its step graph) and returns a JSON-able dict with
``ok``. Not run on CUDA hardware yet: see docs/gpu.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def sample(model: Path, *, loop: str, device: str = "cpu", n: int = 5, batch: int = 2,
           steps: int = 8, sampler: str = "ddpm", guidance: float = 3.0, **kw):
    from ddpm.runtime import Sampler

    with Sampler.from_path(model, device=device, loop=loop, num_threads=kw.pop("threads", 1), **kw) as s:
        return s.sample(n, steps=steps, sampler=sampler, guidance=guidance, seed=3, batch_size=batch).samples


def ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def bandwidth(ctx):
    """Fused update (Philox) GB/s vs a device-to-device copy, at 2^26 fp32 (256 MB)."""
    import torch

    from ddpm.kernels.fused import fused_step
    from ddpm.schedule import ScheduleConfig, step_table

    n = 1 << 26
    table = step_table(ScheduleConfig(), 50, sampler="ddpm")
    out, x, prev = (torch.randn(n, device="cuda") for _ in range(3))

    def timed(fn, reps=20):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    copy = timed(lambda: prev.copy_(x))
    fused = timed(lambda: fused_step(table, 10, out, x, seed=1, out=prev, return_x0=False))
    gbs_copy, gbs_fused = 8 * n / copy / 1e9, 12 * n / fused / 1e9  # bytes moved at least
    return {"ok": gbs_fused >= 0.85 * gbs_copy, "copy_GBps": gbs_copy, "fused_GBps": gbs_fused,
            "ratio": gbs_fused / gbs_copy, "goal": 0.85}


def ort_cuda_vs_cpu(ctx):
    """ORT CUDA device loop vs CPU EP images, TF32 off (fp32 tolerance) and on (reported)."""
    if not ort_has_cuda():
        return {"ok": False, "error": "onnxruntime has no CUDAExecutionProvider (install the onnxruntime-gpu wheel)"}
    ref = sample(ctx["model"], loop="host")
    off = sample(ctx["model"], loop="device", device="cuda")
    on = sample(ctx["model"], loop="device", device="cuda", tf32=True)
    d_off, d_on = float(np.abs(off - ref).max()), float(np.abs(on - ref).max())
    return {"ok": d_off <= 1e-3, "max_abs_tf32_off": d_off, "max_abs_tf32_on": d_on, "atol_off": 1e-3}


def cuda_graph_on_off(ctx):
    """CUDA graph replay == plain runs, across a batch change and a guidance change."""
    if not ort_has_cuda():
        return {"ok": False, "error": "onnxruntime has no CUDAExecutionProvider"}
    from ddpm.runtime import Sampler

    rows = {}
    plain = Sampler.from_path(ctx["model"], device="cuda", loop="device")
    graph = Sampler.from_path(ctx["model"], device="cuda", loop="device", cuda_graph=True)
    for n, b, w in ((8, 4, 3.0), (5, 2, 3.0), (8, 4, 1.0), (8, 4, 3.0)):  # batch, then CFG change
        kw = dict(steps=10, seed=1, batch_size=b, guidance=w)
        rows[f"n={n} b={b} w={w}"] = float(np.abs(plain.sample(n, **kw).samples - graph.sample(n, **kw).samples).max())
    return {"ok": max(rows.values()) <= 1e-5, "max_abs_diff": rows}


def torch_backends(ctx):
    """torch eager on CUDA vs CPU, same random weights of the bundled architecture."""
    import torch

    from ddpm import artifact
    from ddpm.models import build

    c = artifact.read(ctx["model"])
    torch.manual_seed(0)
    net = build(c.arch, dict(c.model_config)).eval()
    x = torch.randn(8, *c.image_shape)
    t = torch.randint(0, 1000, (8,))
    y = torch.randint(0, max(c.num_classes, 1), (8,)) if c.num_classes else None
    with torch.no_grad():
        args = (x, t) if y is None else (x, t, y)
        cpu = net(*args)
        gpu = net.cuda()(*(a.cuda() for a in args)).cpu()
        ts = torch.jit.trace(net, tuple(a.cuda() for a in args))(*(a.cuda() for a in args)).cpu()
    d = float((_tensor(cpu) - _tensor(gpu)).abs().max())
    d_ts = float((_tensor(cpu) - _tensor(ts)).abs().max())
    return {"ok": max(d, d_ts) <= 1e-3, "torch_cuda_vs_cpu": d, "torchscript_cuda_vs_cpu": d_ts}


def fp16_optimize(ctx):
    """fp16 and --optimize cuda graphs vs the fp32 graph, host loop on the CUDA EP."""
    if not ort_has_cuda():
        return {"ok": False, "error": "onnxruntime has no CUDAExecutionProvider"}
    model = ctx["model"]
    opt = model.with_name("model_optimized_cuda.onnx")
    if not (model.with_name("model_fp16.onnx").is_file() and opt.is_file()):
        return {"ok": False, "error": f"not run: {model.parent} lacks the fp16/optimized graphs "
                                      "(run --prepare DIR where onnx is installed, pass --assets DIR)"}
    ref = sample(model, loop="host", device="cuda", steps=20)
    d16 = float(np.abs(sample(model, loop="host", device="cuda", steps=20, precision="fp16") - ref).max())
    dopt = float(np.abs(sample(opt, loop="host", device="cuda", steps=20) - ref).max())
    # fp16 rounding compounds over a chain; 0.05 of the [-1, 1] range is the fp16 export's gate
    return {"ok": d16 <= 0.05 and dopt <= 1e-3, "fp16_max_abs": d16, "optimized_max_abs": dopt}


def timings(ctx):
    """Seconds per 50-step sample at B = 1, 16, 64 for each contender; host time per step."""
    if not ort_has_cuda():
        return {"ok": False, "error": "onnxruntime has no CUDAExecutionProvider"}
    from ddpm.runtime import Sampler

    rows: dict[str, dict[str, float]] = {}
    host_us: dict[str, dict[str, float]] = {}
    variants = {"ort_host": dict(loop="host"), "device": dict(loop="device"),
                "device_cuda_graph": dict(loop="device", cuda_graph=True),
                "triton": dict(loop="triton")}
    for name, kw in variants.items():
        with Sampler.from_path(ctx["model"], device="cuda", **kw) as s:
            for b in (1, 16, 64):
                s.sample(b, steps=50, batch_size=b)  # sessions, buffers, capture: untimed
                t0, c0 = time.perf_counter(), time.process_time()
                s.sample(b, steps=50, batch_size=b)
                rows.setdefault(name, {})[f"B={b}"] = time.perf_counter() - t0
                # host CPU time per step (all threads of this process): the loop's overhead
                host_us.setdefault(name, {})[f"B={b}"] = (time.process_time() - c0) / 50 * 1e6
    return {"ok": True, "seconds_per_50_steps": rows, "host_cpu_us_per_step": host_us}


def torch_chain(f, table, x, t, y, num_classes: int, guidance: float = 3.0):
    """A diffusers-style torch sampling chain: CFG as one 2B call, then the torch step.
    ``x``, ``t``, ``y`` hold the 2B model batch; returns x_0 (B, ...)."""
    import torch

    from ddpm.kernels.reference import step as ref_step

    b = x.shape[0] // 2
    xt = x[:b].clone()
    for i in range(len(table)):
        if num_classes:
            o = _tensor(f(torch.cat([xt, xt]), t, y))
            o = o[b:] + guidance * (o[:b] - o[b:])
        else:
            o = _tensor(f(xt, t[:b]))
        xt, _ = ref_step(table, i, o, xt, torch.randn_like(xt))
    return xt


def _tensor(o):
    return o.sample if hasattr(o, "sample") else (o[0] if isinstance(o, tuple) else o)


def torch_timings(ctx):
    """50 steps of the same UNet (random weights) in torch: eager, torch.compile, TorchScript."""
    import torch

    from ddpm import artifact
    from ddpm.models import build
    from ddpm.schedule import step_table

    c = artifact.read(ctx["model"])
    table = step_table(c.schedule_config, 50, sampler="ddpm")
    torch.manual_seed(0)
    net = build(c.arch, dict(c.model_config)).eval().cuda()
    rows: dict[str, dict[str, float]] = {}
    for b in (1, 16, 64):
        x = torch.randn(2 * b, *c.image_shape, device="cuda")
        t = torch.full((2 * b,), 500, device="cuda", dtype=torch.int64)
        y = torch.arange(2 * b, device="cuda") % max(c.num_classes, 1)
        args = (x, t, y) if c.num_classes else (x, t)
        with torch.no_grad():
            runners = {"eager": net, "torch_compile": torch.compile(net),
                       "torchscript": torch.jit.trace(net, args, check_trace=False)}
            for name, f in runners.items():
                torch_chain(f, table, x, t, y, c.num_classes)  # compile / warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                torch_chain(f, table, x, t, y, c.num_classes)
                torch.cuda.synchronize()
                rows.setdefault(name, {})[f"B={b}"] = time.perf_counter() - t0
    return {"ok": True, "seconds_per_50_steps": rows}


#: (name, time box in seconds, check) in run order.
CHECKS = [
    ("update_bandwidth", 120, bandwidth),
    ("ort_cuda_device_loop_vs_cpu", 180, ort_cuda_vs_cpu),
    ("cuda_graph_on_off", 240, cuda_graph_on_off),
    ("torch_backends_cuda_vs_cpu", 180, torch_backends),
    ("fp16_and_optimize_cuda", 180, fp16_optimize),
    ("timings", 420, timings),
    ("torch_timings", 300, torch_timings),
]
