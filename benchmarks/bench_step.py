"""Fused DDPM step kernel vs unfused torch, torch.compile and diffusers, in GB/s.

A sampler step is memory bound, so the yardstick is bandwidth: every provider is charged
the bytes the step must move at least -- read model output and x_t (and z when it is
loaded), write x_{t-1} and x̂0, 4 bytes each (fp32) -- and compared with the device's
measured copy bandwidth (read + write). Providers generating noise themselves (fused
Philox, diffusers ``DDPMScheduler.step``) are charged 16 B/element, loaded-noise ones 20.

    python benchmarks/bench_step.py            # GPU: 2^16..2^28 elements + B=64 step timing
    python benchmarks/bench_step.py --quick    # CPU smoke run: torch/numpy paths, 2^16..2^20

On a machine without CUDA the Triton columns are reported as null with a note: they need
a GPU. Results go to benchmarks/results/step_<device>.json with the device name, versions
and the command line. Sweep structure follows Triton's tutorial ``triton.testing.perf_report``
(driven directly, so pandas is not required).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpm._io import atomic_write_bytes
from ddpm.kernels.reference import apply_row, coefficients
from ddpm.kernels.reference import step as ref_step
from ddpm.noise import randn
from ddpm.schedule import ScheduleConfig, step_table
from ddpm.schedule import step as np_step

RESULTS = Path(__file__).resolve().parent / "results"
N_STEPS, STEP = 50, 10  # a middle DDPM step: sigma > 0, clipping on (diffusers' defaults)
SEED = 1234
BYTES_PER_ELEM = {"copy": 8, "fused_load": 20, "fused_philox": 16, "torch_ref": 20,
                  "torch_compile": 20, "diffusers": 16, "numpy_step": 20, "numpy_noise": 4}  # fmt: skip
GPU_ONLY = ("fused_load", "fused_philox")
CPU_ONLY = ("numpy_step", "numpy_noise")


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def make_timer(dev: torch.device, reps: int):
    """fn -> (median, p20, p80) milliseconds: do_bench on CUDA, perf_counter on CPU."""
    if dev.type == "cuda":
        import triton.testing

        return lambda fn: tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))

    def cpu_time(fn):
        fn()  # warm-up (allocator, lazy init)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        q = np.quantile(ts, [0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2])

    return cpu_time


class Step:
    """Inputs and one callable per provider for a tensor of ``shape`` on ``dev``."""

    def __init__(self, shape: tuple[int, ...], dev: torch.device, compiled=None):
        self.table = step_table(ScheduleConfig(), N_STEPS, sampler="ddpm")
        # Values do not affect timing; torch.randn on the device keeps 2^28 setups fast.
        g = torch.Generator(dev).manual_seed(SEED)
        self.out, self.xt, self.z = (torch.randn(shape, generator=g, device=dev) for _ in range(3))
        self.prev = torch.empty_like(self.xt)
        self.sched = self.t = None
        if has_diffusers():  # a contender only where installed (the GPU machine has none)
            from diffusers import DDPMScheduler

            self.sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                       clip_sample=True, variance_type="fixed_small")  # fmt: skip
            self.sched.set_timesteps(N_STEPS)
            self.t = self.sched.timesteps[STEP]
        self.row = coefficients(self.table, STEP)
        self.compiled = compiled
        if dev.type == "cpu":
            self.out_np, self.xt_np, self.z_np = (a.numpy() for a in (self.out, self.xt, self.z))

    def fn(self, provider: str):
        r, tab = self.row, self.table
        if provider == "copy":
            return lambda: self.prev.copy_(self.xt)
        if provider in GPU_ONLY:
            from ddpm.kernels.fused import fused_step

            if provider == "fused_load":
                return lambda: fused_step(tab, STEP, self.out, self.xt, self.z, out=self.prev)
            return lambda: fused_step(tab, STEP, self.out, self.xt, seed=SEED, out=self.prev)
        if provider == "torch_ref":
            return lambda: ref_step(tab, STEP, self.out, self.xt, self.z)
        if provider == "torch_compile":
            return lambda: self.compiled(r, tab.clip_sample_range, self.out, self.xt, self.z)
        if provider == "diffusers":
            return lambda: self.sched.step(self.out, self.t, self.xt)
        if provider == "numpy_step":
            return lambda: np_step(tab, STEP, self.out_np, self.xt_np, self.z_np)
        if provider == "numpy_noise":
            return lambda: randn(self.xt_np.shape, seed=SEED, step=STEP)
        raise ValueError(f"unknown provider {provider!r}")


def has_diffusers() -> bool:
    import importlib.util

    return importlib.util.find_spec("diffusers") is not None


def providers_for(dev: torch.device, with_compile: bool) -> list[str]:
    names = ["copy", "fused_load", "fused_philox", "torch_ref", "torch_compile", "diffusers"]
    if dev.type == "cpu":
        names += list(CPU_ONLY)
    keep = []
    for p in names:
        if p in GPU_ONLY and dev.type != "cuda":
            continue
        if p == "torch_compile" and not with_compile:
            continue
        if p == "diffusers" and not has_diffusers():
            continue
        keep.append(p)
    return keep


def make_report(sizes: list[int], providers: list[str]):
    """The sweep declared as in Triton's tutorials; its function returns GB/s quantiles."""
    import triton.testing

    return triton.testing.perf_report(
        triton.testing.Benchmark(
            x_names=["size"], x_vals=sizes, x_log=True, line_arg="provider",
            line_vals=providers, line_names=providers, ylabel="GB/s",
            plot_name="ddpm-step-bandwidth", args={},
        )  # fmt: skip
    )


def run_sweep(dev, sizes, providers, timer, compiled) -> list[dict]:
    cache: dict[int, Step] = {}

    def bench(size: int, provider: str):
        if size not in cache:  # one set of inputs per size, shared by all providers
            cache.clear()
            cache[size] = Step((size // 1024, 1024), dev, compiled)
        step = cache[size]
        ms = timer(step.fn(provider))
        gbps = [BYTES_PER_ELEM[provider] * size / (m * 1e-3) / 1e9 for m in ms]
        return gbps[0], gbps[2], gbps[1]  # (median, min, max) GB/s as perf_report expects

    mark = make_report(sizes, providers)(bench)
    rows = []
    for size in mark.benchmarks.x_vals:
        row = {"size": size}
        for p in mark.benchmarks.line_vals:
            row[p] = round(mark.fn(size, p)[0], 3)
        rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    cache.clear()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def run_per_step(dev, providers, timer, compiled) -> dict:
    """Milliseconds for one step at B=64, 3x32x32 (a CIFAR-sized sampling batch)."""
    step = Step((64, 3, 32, 32), dev, compiled)
    res = {}
    for p in providers:
        if p != "copy":
            res[p] = [round(v, 4) for v in timer(step.fn(p))]
            print(f"B=64 3x32x32 {p}: median {res[p][0]} ms (p20 {res[p][1]}, p80 {res[p][2]})")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    ap.add_argument("--cpu", action="store_true", help="force CPU even when CUDA is present")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile provider (auto: GPU only; CPU compile is slow)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a busy host OpenMP spin-waits make "
                    "2 threads ~100x slower)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default results/step_<device>.json)")
    args = ap.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    with_compile = args.compile == "on" or (args.compile == "auto" and dev.type == "cuda")
    if dev.type == "cuda":
        sizes = [2**k for k in range(16, 29, 2 if args.quick else 1)]
    else:
        sizes = [2**k for k in range(16, 21, 2)]
    reps = 5 if args.quick else 21
    timer = make_timer(dev, reps)
    compiled = torch.compile(apply_row, dynamic=True) if with_compile else None
    providers = providers_for(dev, with_compile)
    name = device_name(dev)
    print(f"device: {name}; providers: {', '.join(providers)}; sizes 2^16..2^{sizes[-1].bit_length() - 1}")

    notes = [f"GB/s = bytes/element {BYTES_PER_ELEM} x elements / median time; fp32",
             f"step {STEP} of a {N_STEPS}-step DDPM table (linear schedule, clip on, sigma > 0)"]  # fmt: skip
    if dev.type != "cuda":
        notes.append("no CUDA device: the fused Triton columns (fused_load, fused_philox) need a "
                     "GPU and were not run; CPU timings on a shared machine are noisy (median of "
                     f"{reps}); torch CPU threads = {torch.get_num_threads()}")  # fmt: skip
    if not with_compile:
        notes.append("torch_compile not run (pass --compile on to time it on CPU)")
    import triton

    result = {
        "device": name,
        "device_type": dev.type,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "notes": notes,
        "sweep_gbps": run_sweep(dev, sizes, providers, timer, compiled),
        "per_step_b64_ms": run_per_step(dev, providers, timer, compiled),
    }
    tag = re.sub(r"[^a-z0-9]+", "_", (name if dev.type == "cuda" else "cpu").lower()).strip("_")
    path = args.out or RESULTS / f"step_{tag}.json"
    atomic_write_bytes(path, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
