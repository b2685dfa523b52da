"""End-to-end sampling speed, side by side in one process: DDPMPipeline vs our paths.

Every contender (see :mod:`ddpm.bench.contenders`) samples the same weights for the same
number of DDPM steps, noise and updates included, on the same ``--threads``. Per batch size:
one short warm-up run each (2 steps; triggers torch.compile's compilation, ORT's and
OpenVINO's first-run allocations), then ``--repeats`` timed runs, the contenders alternating
in a rotating order so load from other processes hits all of them alike; we report medians
and ratios from this one run. The yardstick is the fp32 FLOP bound: torch's FlopCounterMode
count of one UNet call divided by the SGEMM rate measured in the same run (2048^3 torch
matmul, same thread count), before and after the sweep.

    ddpm-bench --models article --batches 1,16 --out results.json
    ddpm-bench --quick                              # tiny model, seconds (the smoke test)
    python benchmarks/bench_sampling.py ...         # the same, JSON into benchmarks/results/

The JSON (only where ``--out`` says) records the CPU model, core counts and ISA flags
(:mod:`ddpm.cpuinfo`), the load average before/after, threads, versions and the command
line; a markdown table goes to the log. Built models go to ``--work`` (default the user
cache folder), never the working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.bench import contenders as bc
from ddpm.bench import models as bm
from ddpm.cpuinfo import cpu_facts, has_flag

#: Every contender, in table order (see ddpm.bench.contenders).
ALL = ("diffusers_pipeline", "host_loop_torch_eager", "host_loop_torch_compiled_unet",
       "host_loop_torch_bf16_autocast", "host_loop_ort_default_session", "ddpm_run_ort",
       "ddpm_run_ort_optimized", "ddpm_run_ort_optimized_spin", "ddpm_run_ort_int8",
       "ddpm_run_openvino_f32", "ddpm_run_openvino_bf16", "ddpm_run_openvino_int8")
BF16 = ("host_loop_torch_bf16_autocast", "ddpm_run_openvino_bf16")
BASELINE, EAGER = "diffusers_pipeline", "host_loop_torch_eager"


def native_bf16() -> bool:
    """bf16 has hardware dot products here (else bf16 rows are emulated: not run by default)."""
    return has_flag("amx_bf16") or has_flag("avx512_bf16")


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


def contenders_for(art: dict[str, Any], wanted: list[str], threads: int) -> tuple[list, list[str]]:
    """The contenders of ``wanted`` this model and machine can run, and notes on the rest."""
    import importlib.util

    out: list[bc.Contender] = []
    notes: list[str] = []
    g, onnx, opt, int8 = art["guidance"], art["onnx"], art.get("optimized"), art.get("int8")
    have_ov = importlib.util.find_spec("openvino") is not None
    for name in wanted:
        if name.startswith("ddpm_run_openvino") and not have_ov:
            notes.append(f"{name} skipped: openvino not installed (pip install \"ddpm-toolkit[openvino]\")")
        elif name == "ddpm_run_openvino_bf16" and not native_bf16():
            notes.append(f"{name} skipped: this CPU has no native bf16 (amx_bf16 / avx512_bf16)")
        elif name.endswith("_int8") and not int8:
            notes.append(f"{name} skipped: no model_int8.onnx for {art['name']}")
        elif name == "diffusers_pipeline":
            if art.get("unet") is not None:
                out.append(bc.diffusers_pipeline(art["unet"], art["schedule"]))
        elif name in ("host_loop_torch_eager", "host_loop_torch_compiled_unet",
                      "host_loop_torch_bf16_autocast"):
            mode = {"host_loop_torch_eager": "eager", "host_loop_torch_compiled_unet": "compile"}
            out.append(bc.torch_loop(art["ckpt"], g, threads, mode=mode.get(name, "bf16")))
        elif name == "host_loop_ort_default_session":
            out.append(bc.ort_default(onnx, g, threads))
        elif name == "ddpm_run_ort":
            out.append(bc.ddpm_run(onnx, g, threads))
        elif name in ("ddpm_run_ort_optimized", "ddpm_run_ort_optimized_spin") and opt:
            spin = name.endswith("_spin")
            out.append(bc.ddpm_run(opt, g, threads, name=name, spin=spin, note=(
                "the same with spin=True (pool spins inside a run; only an unsplit batch of 1 "
                "uses a pool)" if spin else "Sampler on model_optimized.onnx (ddpm-export --optimize)")))
        elif name == "ddpm_run_ort_int8":
            out.append(bc.ddpm_run(int8, g, threads, name=name,
                                   note="Sampler on model_int8.onnx (ddpm-export --int8, QDQ static)"))
        elif name.startswith("ddpm_run_openvino"):
            path = int8 if name.endswith("_int8") else onnx
            prec = "bf16" if name.endswith("_bf16") else "fp32"
            out.append(bc.ddpm_run(path, g, threads, name=name, backend="openvino", compute_precision=prec,
                                   note=f"Sampler.from_path({path.name}, 'openvino'), {prec} compute"))
    return out, notes


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


def bench_model(art: dict[str, Any], args, peak: float, log) -> tuple[list[dict[str, Any]], list[str]]:
    cs, notes = contenders_for(art, args.contenders, args.threads)
    for n in notes:
        log(f"note: {n}")
    rows = []
    for batch in args.model_batches.get(art["name"], args.batches):
        flops = count_flops(art["module"], art["image_shape"], batch * art["cfg_factor"], art["num_classes"])
        log(f"{art['name']}: batch {batch}, {flops / 1e9:.2f} GFLOP per UNet call, "
            f"contenders {[c.name for c in cs]} (load {os.getloadavg()[0]:.2f})")
        times = time_batch(cs, batch, args.steps, args.repeats)
        base = float(np.median(times[BASELINE])) if BASELINE in times else None
        eager = float(np.median(times[EAGER])) if EAGER in times else None
        bound_ms = flops / (peak * 1e9) * 1e3
        for c in cs:
            med = float(np.median(times[c.name]))
            step_ms = med / args.steps * 1e3
            rows.append({
                "model": art["name"], "batch": batch, "contender": c.name, "note": c.note,
                "threads": args.threads,
                "runs_s": [round(t, 4) for t in times[c.name]], "median_s": round(med, 4),
                "ms_per_step": round(step_ms, 2), "images_per_s": round(batch / med, 2),
                "speedup_vs_diffusers": round(base / med, 2) if base else None,
                "speedup_vs_torch_loop": round(eager / med, 2) if eager else None,
                "gflop_per_step": round(flops / 1e9, 3),
                "bound_ms_per_step": round(bound_ms, 2),
                "fraction_of_bound": round(bound_ms / step_ms, 3),
            })
            log(f"  {c.name:32s} {step_ms:8.2f} ms/step  {batch / med:8.2f} img/s"
                + (f"  x{base / med:.2f} vs DDPMPipeline" if base else ""))
    return rows, notes


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
    from ddpm.runtime.ort_session import physical_cores

    p = _Parser(prog="ddpm-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, B 1/2, 3 steps, 1 repeat")
    p.add_argument("--models", default=None, help="comma list of article,cifar,bundled,tiny "
                   "(default article,bundled)")
    p.add_argument("--batches", default=None, help="comma list (default 1,16,64)")
    p.add_argument("--model-batches", action="append", default=[], metavar="MODEL=B[,B...]",
                   help="batches for one model instead of --batches (repeatable), e.g. cifar=8")
    p.add_argument("--steps", type=int, default=None, help="DDPM steps (default 50)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per contender (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of every contender (default: the physical cores)")
    p.add_argument("--contenders", default=None, help=f"comma list of {','.join(ALL)} (default: "
                   "all; bf16 rows only on CPUs with native bf16)")
    p.add_argument("--bundled-ckpt", default=None, help="bundled model ckpt.pt (default runs/bundled)")
    p.add_argument("--work", default=None, help="folder for the built models (default "
                   "~/.cache/ddpm/bench)")
    p.add_argument("--out", default=None, help="write the JSON here (default: no file)")
    a = p.parse_args(argv)
    q = a.quick
    a.models = (a.models or ("tiny" if q else "article,bundled")).split(",")
    try:
        a.batches = [int(b) for b in (a.batches or ("1,2" if q else "1,16,64")).split(",")]
    except ValueError:
        p.error(f"--batches {a.batches!r} is not a comma list of integers")
    per_model: dict[str, list[int]] = {}
    for item in a.model_batches:
        name, _, values = item.partition("=")  # no "=": values is "", which int() refuses
        try:
            batches = [int(b) for b in values.split(",")]
        except ValueError:
            batches = []
        if name not in a.models or not batches or min(batches) < 1:
            p.error(f"--model-batches {item!r}: expected MODEL=B[,B...] with MODEL one of "
                    f"--models ({','.join(a.models)}) and batches >= 1")
        per_model[name] = batches
    a.model_batches = per_model
    a.steps = a.steps or (3 if q else 50)
    a.repeats = a.repeats or (1 if q else 3)
    a.threads = physical_cores() if a.threads is None else a.threads
    if a.threads < 1 or a.steps < 1 or a.repeats < 1 or min(a.batches) < 1:
        p.error("--threads, --steps, --repeats and --batches must be >= 1")
    if a.contenders is None:  # emulated bf16 on CPUs without it is minutes per row: opt-in there
        a.contenders = [c for c in ALL if c not in BF16 or native_bf16()]
    else:
        a.contenders = [c for c in a.contenders.split(",") if c]
    a.contenders = [c for c in a.contenders if not (q and c == "host_loop_torch_compiled_unet")]
    bad = [c for c in a.contenders if c not in ALL]
    if bad:
        p.error(f"unknown contender(s) {bad}: choose from {','.join(ALL)}")
    from ddpm.runtime.engines.openvino import user_cache_dir

    a.work = Path(a.work) if a.work else user_cache_dir() / "bench"
    return a


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("torch", "onnxruntime", "openvino", "diffusers", "ddpm-toolkit"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def run(argv: list[str] | None = None, log=print, prog: str = "ddpm-bench") -> dict[str, Any]:
    """Run the benchmark for command-line ``argv``; returns the result (written to --out)."""
    import sys

    import torch

    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    peak0 = gemm_peak(1024 if a.quick else 2048, 3 if a.quick else 7)
    arts, notes = [], []
    for m in a.models:
        art, note = bm.load_model(m, a.work, int8=any(c.endswith("_int8") for c in a.contenders),
                                  bundled=a.bundled_ckpt)
        if note:
            notes.append(note)
            log(f"note: {note}")
        if art is not None:
            arts.append(art)
    rows = []
    for art in arts:
        r, n = bench_model(art, a, peak0["torch_sgemm_gflops"], log)
        rows += r
        notes += [x for x in n if x not in notes]
    peak1 = gemm_peak(1024 if a.quick else 2048, 3 if a.quick else 7)
    peak = max(peak0["torch_sgemm_gflops"], peak1["torch_sgemm_gflops"])
    for r in rows:  # the bound uses the best SGEMM rate seen in this run
        r["bound_ms_per_step"] = round(r["gflop_per_step"] / peak * 1e3, 2)
        r["fraction_of_bound"] = round(r["bound_ms_per_step"] / r["ms_per_step"], 3)
    result = {
        **cpu_facts(), "threads": a.threads, "versions": _versions(),
        "command": " ".join([prog, *argv]),
        "quick": a.quick, "steps": a.steps, "repeats": a.repeats, "batches": a.batches,
        "model_batches": a.model_batches,
        "load_avg_start": [round(x, 2) for x in load0],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "gemm_peak_start": peak0, "gemm_peak_end": peak1, "gemm_peak_gflops": peak,
        "models": {art["name"]: art["facts"] for art in arts}, "notes": notes, "rows": rows,
    }
    log(markdown(rows))
    if a.out:
        from ddpm._io import atomic_write_bytes

        atomic_write_bytes(a.out, (json.dumps(result, indent=1) + "\n").encode())
        log(f"wrote {a.out}")
        result["out"] = str(a.out)
    else:
        log("no --out given: JSON not written")
    return result
