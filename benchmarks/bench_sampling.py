"""End-to-end sampling speed, side by side in one process: DDPMPipeline vs our paths (issue 7).

Every contender (see ``bench_contenders.py``) samples the same weights for the same number
of DDPM steps, noise and updates included. Per batch size: one short warm-up run each (2
steps; triggers torch.compile's compilation and ORT's first-run allocations), then
``--repeats`` timed runs, the contenders alternating in a rotating order so load from
other processes hits all of them alike; we report medians. The yardstick is the fp32 FLOP
bound: torch's FlopCounterMode count of one UNet call divided by the SGEMM rate measured
in the same run (2048^3 torch matmul, same thread count), before and after the sweep.

    python benchmarks/bench_sampling.py                 # article UNet2DModel (+ bundled), B 1/16/64
    python benchmarks/bench_sampling.py --quick         # tiny model, seconds (the smoke test)
    ddpm-bench --batches 16 --repeats 5                 # the same through the console script

Results: ``benchmarks/results/sampling_<tag>.json`` (with the load average before/after,
threads, versions, CPU flags and the command line) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_contenders as bc  # noqa: E402
import bench_models as bm  # noqa: E402

RESULTS = HERE / "results"
ALL = ("diffusers", "torch", "torch_compile", "ort_default", "ddpm_run", "ddpm_run_opt", "ddpm_run_opt_spin",
       "int8")


def cpu_facts() -> dict[str, Any]:
    name, flags = platform.processor() or "cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
                       "amx_int8") if f in flags]
    return {"cpu": name, "logical_cpus": os.cpu_count(), "isa": isa}


def median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def gemm_peak(n: int = 2048, repeats: int = 7) -> dict[str, float]:
    """Measured SGEMM GFLOP/s of an n^3 matmul (torch and numpy), at the current threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    flops = 2.0 * n**3
    return {"torch_sgemm_gflops": flops / median_ms(lambda: a @ b, repeats) / 1e6,
            "numpy_sgemm_gflops": flops / median_ms(lambda: an @ bn, repeats) / 1e6}


def count_flops(module, image_shape, batch: int, num_classes: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(batch, *image_shape)
    t = torch.full((batch,), 500, dtype=torch.int64)
    args = (x, t) if not num_classes else (x, t, torch.zeros(batch, dtype=torch.int64))
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        module(*args)
    return int(fc.get_total_flops())


def contenders_for(art: dict[str, Any], wanted: list[str], threads: int) -> list[bc.Contender]:
    out: list[bc.Contender] = []
    g = art["guidance"]
    for name in wanted:
        if name == "diffusers" and art.get("unet") is not None:
            out.append(bc.diffusers_pipeline(art["unet"], art["schedule"]))
        elif name in ("torch", "torch_compile"):
            out.append(bc.torch_loop(art["ckpt"], g, compile=name == "torch_compile"))
        elif name == "ort_default":
            out.append(bc.ort_default(art["onnx"], g))
        elif name == "ddpm_run":
            out.append(bc.ddpm_run(art["onnx"], g, threads=threads))
        elif name == "ddpm_run_opt" and art.get("optimized"):
            out.append(bc.ddpm_run(art["optimized"], g, name=name, threads=threads,
                                   note="Sampler on model_optimized.onnx (ddpm-export --optimize)"))
        elif name == "ddpm_run_opt_spin" and art.get("optimized"):
            out.append(bc.ddpm_run(art["optimized"], g, name=name, threads=threads, spin=True,
                                   note="the same with --spin (pool spins inside a run; only an "
                                        "unsplit batch of 1 uses a pool)"))
        elif name == "int8" and art.get("int8"):
            out.append(bc.ddpm_run(art["int8"], g, name=name, threads=threads,
                                   note="Sampler on model_int8.onnx (ddpm-export --int8, QDQ static)"))
    return out


def time_batch(cs: list[bc.Contender], batch: int, steps: int, repeats: int) -> dict[str, list[float]]:
    for c in cs:
        c.run(batch, 2)  # warm-up: compile, allocator, ORT first-run
    times: dict[str, list[float]] = {c.name: [] for c in cs}
    for r in range(repeats):
        order = cs[r % len(cs):] + cs[: r % len(cs)]  # rotate: nobody always runs first
        for c in order:
            t0 = time.perf_counter()
            c.run(batch, steps)
            times[c.name].append(time.perf_counter() - t0)
    return times


def bench_model(art: dict[str, Any], args, peak: float, log) -> list[dict[str, Any]]:
    cs = contenders_for(art, args.contenders, args.threads)
    rows = []
    for batch in args.batches:
        flops = count_flops(art["module"], art["image_shape"], batch * art["cfg_factor"], art["num_classes"])
        log(f"{art['name']}: batch {batch}, {flops / 1e9:.2f} GFLOP per UNet call, "
            f"contenders {[c.name for c in cs]} (load {os.getloadavg()[0]:.2f})")
        times = time_batch(cs, batch, args.steps, args.repeats)
        base = float(np.median(times["diffusers"])) if "diffusers" in times else None
        eager = float(np.median(times["torch"])) if "torch" in times else None
        bound_ms = flops / (peak * 1e9) * 1e3
        for c in cs:
            med = float(np.median(times[c.name]))
            step_ms = med / args.steps * 1e3
            rows.append({
                "model": art["name"], "batch": batch, "contender": c.name, "note": c.note,
                "runs_s": [round(t, 4) for t in times[c.name]], "median_s": round(med, 4),
                "ms_per_step": round(step_ms, 2), "images_per_s": round(batch / med, 2),
                "speedup_vs_diffusers": round(base / med, 2) if base else None,
                "speedup_vs_torch_loop": round(eager / med, 2) if eager else None,
                "gflop_per_step": round(flops / 1e9, 3),
                "bound_ms_per_step": round(bound_ms, 2),
                "fraction_of_bound": round(bound_ms / step_ms, 3),
            })
            log(f"  {c.name:14s} {step_ms:8.2f} ms/step  {batch / med:8.2f} img/s"
                + (f"  x{base / med:.2f} vs DDPMPipeline" if base else ""))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | batch | contender | ms/step | images/s | vs DDPMPipeline | vs torch loop "
            "| GFLOP/step | FLOP bound ms/step | of bound |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        sp = f"{r['speedup_vs_diffusers']:.2f}x" if r.get("speedup_vs_diffusers") else "-"
        st = f"{r['speedup_vs_torch_loop']:.2f}x" if r.get("speedup_vs_torch_loop") else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['contender']} | {r['ms_per_step']:.1f} | "
                     f"{r['images_per_s']:.1f} | {sp} | {st} | {r['gflop_per_step']:.2f} | "
                     f"{r['bound_ms_per_step']:.1f} | {100 * r['fraction_of_bound']:.0f}% |")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (ddpm.errors), not argparse's usage dump
        from ddpm.errors import ConfigError

        raise ConfigError(f"{message}; see --help")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, B 1/2, 3 steps, 1 repeat")
    p.add_argument("--models", default=None, help="comma list of article,bundled (default both)")
    p.add_argument("--batches", default=None, help="comma list (default 1,16,64)")
    p.add_argument("--steps", type=int, default=None, help="DDPM steps (default 50)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per contender (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads")
    p.add_argument("--contenders", default=",".join(ALL), help=f"comma list of {','.join(ALL)}")
    p.add_argument("--bundled-ckpt", default=None, help="bundled model ckpt.pt (default runs/bundled)")
    p.add_argument("--work", default=None, help="folder for the built models (default ~/.cache)")
    p.add_argument("--out", default=None, help="JSON path (default results/sampling_<tag>.json)")
    a = p.parse_args(argv)
    q = a.quick
    a.models = (a.models or ("tiny" if q else "article,bundled")).split(",")
    a.batches = [int(b) for b in (a.batches or ("1,2" if q else "1,16,64")).split(",")]
    a.steps = a.steps or (3 if q else 50)
    a.repeats = a.repeats or (1 if q else 3)
    a.contenders = [c for c in a.contenders.split(",") if c and not (q and c == "torch_compile")]
    bad = [c for c in a.contenders if c not in ALL]
    if bad:
        p.error(f"unknown contender(s) {bad}: choose from {','.join(ALL)}")
    a.work = Path(a.work or Path.home() / ".cache" / "ddpm-bench")
    return a


def run(argv: list[str] | None = None, log=print) -> dict[str, Any]:
    import torch

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    peak0 = gemm_peak(1024 if a.quick else 2048, 3 if a.quick else 7)
    arts, notes = [], []
    for m in a.models:
        art, note = bm.load_model(m, a.work, int8="int8" in a.contenders, bundled=a.bundled_ckpt)
        if note:
            notes.append(note)
            log(f"note: {note}")
        if art is not None:
            arts.append(art)
    rows = []
    for art in arts:
        rows += bench_model(art, a, peak0["torch_sgemm_gflops"], log)
    peak1 = gemm_peak(1024 if a.quick else 2048, 3 if a.quick else 7)
    peak = max(peak0["torch_sgemm_gflops"], peak1["torch_sgemm_gflops"])
    for r in rows:  # the bound uses the best SGEMM rate seen in this run
        r["bound_ms_per_step"] = round(r["gflop_per_step"] / peak * 1e3, 2)
        r["fraction_of_bound"] = round(r["bound_ms_per_step"] / r["ms_per_step"], 3)
    import onnxruntime

    result = {
        **cpu_facts(), "threads": a.threads, "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "command": " ".join(sys.argv),
        "quick": a.quick, "steps": a.steps, "repeats": a.repeats, "batches": a.batches,
        "load_avg_start": [round(x, 2) for x in load0],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "gemm_peak_start": peak0, "gemm_peak_end": peak1, "gemm_peak_gflops": peak,
        "models": {art["name"]: art["facts"] for art in arts}, "notes": notes, "rows": rows,
    }
    out = Path(a.out) if a.out else RESULTS / f"sampling_{'quick' if a.quick else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(markdown(rows))
    log(f"wrote {out}")
    result["out"] = str(out)
    return result


if __name__ == "__main__":
    from ddpm.errors import DDPMError

    try:
        run()
    except DDPMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
