"""One command that checks the GPU path end to end and times it; ``--cpu-dry-run`` runs the
parts a CPU can check (the ORT CPU EP device loop, the Triton interpreter) in CI.

    python benchmarks/gpu_check.py                # on the GPU machine, < 8 min on an H100/H200
    python benchmarks/gpu_check.py --cpu-dry-run  # CI: every part with a CPU meaning, < 60 s
    python benchmarks/gpu_check.py --prepare DIR  # where onnx is installed: write the step
                                                  # graph files the GPU run needs into DIR

Needs numpy, onnxruntime(-gpu), torch and triton, never diffusers or the network. Each
sub-check runs in its own forked process with its own time box, so one failure or hang does
not stop the rest; a check whose hardware is absent reports ``"not run: no CUDA"``, never a
pass. All results go to one JSON file (``$OUT/gpu_check.json`` when ``$OUT`` is set, else the
path printed) plus a one-screen summary. The step graph (model_step.onnx) is built with the
``onnx`` package; where that is missing, ``--assets DIR`` points at a ``--prepare`` folder.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NO_CUDA = "not run: no CUDA"
CHECKS: list[tuple[str, float, bool, Callable]] = []  # (name, seconds, cpu meaning, fn)


def check(name: str, seconds: float, cpu: bool = False):
    """Register a sub-check: ``seconds`` is its time box; ``cpu`` whether --cpu-dry-run runs it."""
    def deco(fn):
        CHECKS.append((name, seconds, cpu, fn))
        return fn
    return deco


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# -- shared inputs --------------------------------------------------------------------------
def prepare(folder: Path, variants: bool = False) -> Path:
    """The bundled digits model plus its step graph in ``folder`` (needs onnx); with
    ``variants`` also model_fp16.onnx and model_optimized_cuda.onnx (``--optimize cuda``)."""
    from ddpm.export import step_graph
    from ddpm.runtime.assets import default_model_path

    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    if not model.is_file():
        shutil.copy(default_model_path("ort"), model)
    if not (folder / "model_step.onnx").is_file():
        # validate=False: the device-loop checks below compare whole chains with the host loop
        step_graph.write(model, folder / "model_step.onnx", validate=False, say=lambda _m: None)
    if variants:
        _variants(model, folder)
    return model


def _variants(model: Path, folder: Path) -> None:
    import dataclasses

    from ddpm import artifact
    from ddpm.export.fp16 import convert_fp16
    from ddpm.export.graphs import finish_onnx
    from ddpm.export.optimize import optimize_graph
    from ddpm.export.validate import model_batches

    c = artifact.read(model)
    if not (folder / "model_fp16.onnx").is_file():
        feeds = model_batches(c.image_shape, c.num_classes, c.schedule_config.num_train_timesteps, seed=123)
        m16 = convert_fp16(model, feeds, say=lambda _m: None)
        finish_onnx(m16, folder / "model_fp16.onnx", dataclasses.replace(c, precision="fp16"))
    if not (folder / "model_optimized_cuda.onnx").is_file():
        finish_onnx(optimize_graph(model, "cuda"), folder / "model_optimized_cuda.onnx", c)


def max_ulp(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in float32 units in the last place (ordered-integer trick)."""
    def ordered(x):
        i = np.ascontiguousarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return int(np.abs(ordered(a) - ordered(b)).max()) if a.size else 0


# -- checks ---------------------------------------------------------------------------------
@check("env", 60, cpu=True)
def env(ctx):
    import onnxruntime as ort

    import ddpm
    from ddpm import cpuinfo

    out = {"ddpm": ddpm.__version__, "python": sys.version.split()[0], "numpy": np.__version__,
           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(),
           "cpu": cpuinfo.cpu_model()}
    for mod in ("torch", "triton", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    if has_cuda():
        import torch

        out["gpu"] = torch.cuda.get_device_name(0)
        out["cuda"] = torch.version.cuda
    return {"ok": True, **out}


@check("device_loop_cpu_ep", 120, cpu=True)
def device_loop_cpu(ctx):
    """ORT CPU EP: device loop == host loop for DDPM/DDIM, CFG on and off, ragged batches."""
    from ddpm.runtime import Sampler

    rows = {}
    host, dev = (Sampler.from_path(ctx["model"], loop=loop, num_threads=1) for loop in ("host", "device"))
    for sampler in ("ddpm", "ddim"):
        for w in (3.0, 1.0):
            kw = dict(steps=6, sampler=sampler, guidance=w, seed=3, batch_size=2)
            rows[f"{sampler} w={w}"] = float(np.abs(host.sample(3, **kw).samples - dev.sample(3, **kw).samples).max())
    return {"ok": max(rows.values()) <= 1e-4, "max_abs_diff": rows, "atol": 1e-4}


@check("cuda_graph_refused_on_cpu", 60, cpu=True)
def cuda_graph_refused(ctx):
    from ddpm.errors import BackendError
    from ddpm.runtime import Sampler

    try:
        Sampler.from_path(ctx["model"], device="cpu", cuda_graph=True, loop="device")
    except BackendError as e:
        return {"ok": e.exit_code == 2 and "\n" not in str(e), "message": str(e)}
    return {"ok": False, "message": "accepted --cuda-graph on the CPU EP"}


def _kernel_device():
    """(torch device, mode) for the Triton kernel: CUDA, else the interpreter on CPU."""
    import torch

    if has_cuda():
        return torch.device("cuda"), "cuda"
    os.environ["TRITON_INTERPRET"] = "1"  # this process only (a forked check)
    return torch.device("cpu"), "interpreter"


@check("triton_vs_reference", 180, cpu=True)
def triton_vs_reference(ctx):
    """Fused kernel vs torch reference for every sampler, explicit noise, CFG on: max ulp."""
    dev, mode = _kernel_device()
    import torch

    from ddpm.kernels.fused import fused_step
    from ddpm.kernels.reference import step as ref_step
    from ddpm.runtime.loops.guidance import combine
    from ddpm.schedule import SAMPLER_OBJECTIVE, ScheduleConfig, step_table

    shape = (4, 1, 16, 16) if mode == "interpreter" else (64, 3, 64, 64)
    g = torch.Generator("cpu").manual_seed(0)
    rows = {}
    for sampler in SAMPLER_OBJECTIVE:
        cfg = ScheduleConfig(**({"objective": "corrupt", "prediction_type": "sample"}
                                if SAMPLER_OBJECTIVE[sampler] == "corrupt" else {}))
        table = step_table(cfg, 10, sampler=sampler)
        x, z, px0 = (torch.randn(shape, generator=g).to(dev) for _ in range(3))
        out2 = torch.randn((2 * shape[0], *shape[1:]), generator=g).to(dev)
        worst = 0
        for i in (0, 5, 9):
            got, got_x0 = fused_step(table, i, out2, x, z, guidance_scale=3.0, prev_x0=px0)
            out = combine(out2[: shape[0]], out2[shape[0]:], 3.0)
            ref, ref_x0 = ref_step(table, i, out, x, z, prev_x0=px0)
            for a, b in ((got, ref), (got_x0, ref_x0)):
                worst = max(worst, max_ulp(a.cpu().numpy(), b.cpu().numpy()))
        rows[sampler] = worst
    # The kernel is compiled without FMA contraction, so up to a few ulp from operand order.
    return {"ok": max(rows.values()) <= 4, "mode": mode, "max_ulp": rows, "ulp_bound": 4}


@check("philox_vs_ddpm_noise", 120, cpu=True)
def philox_bits(ctx):
    """In-kernel tl.randn noise == ddpm.noise.randn, bit for bit (via sigma·z, c = 0 else)."""
    dev, mode = _kernel_device()
    import torch

    from ddpm.kernels.fused import fused_step
    from ddpm.noise import randn
    from ddpm.schedule import ScheduleConfig, step_table

    table = step_table(ScheduleConfig(), 10, sampler="ddpm")
    shape = (3, 1, 16, 16) if mode == "interpreter" else (64, 3, 64, 64)
    x = torch.zeros(shape, device=dev)
    out = torch.zeros(shape, device=dev)
    rows = {}
    for seed, i, offset in ((0, 0, 0), (2**32 - 1, 4, 768), (12345, 8, 10**9)):
        a, _ = fused_step(table, i, out, x, seed=seed, noise_offset=offset)
        z = torch.from_numpy(randn(shape, seed=seed, step=i, offset=offset)).to(dev)
        b, _ = fused_step(table, i, out, x, z)
        rows[f"seed={seed} step={i} offset={offset}"] = bool(torch.equal(a, b))
    return {"ok": all(rows.values()), "mode": mode, "bit_identical": rows}


@check("triton_loop_vs_host", 180, cpu=True)
def triton_loop(ctx):
    """--update triton's loop (ORT + fused kernel, in-kernel Philox) vs the host loop, every
    sampler, CFG on/off, ragged batches: on CUDA, or on the CPU EP + Triton interpreter."""
    dev, mode = _kernel_device()
    from ddpm.runtime import Sampler
    from ddpm.runtime.loops.cuda import TritonLoop

    device = "cuda" if mode == "cuda" else "cpu"
    host = Sampler.from_path(ctx["model"], loop="host", num_threads=1)
    tri = Sampler.from_path(ctx["model"], device=device, loop="host", num_threads=1)
    tri._loop = TritonLoop(tri.engine)  # what --update triton selects on CUDA
    rows = {}
    for sampler, w in (("ddpm", 3.0), ("ddim", 1.0), ("dpm++2m", 3.0)):
        kw = dict(steps=5, seed=1, batch_size=2, guidance=w, sampler=sampler)
        try:
            a, b = host.sample(5, **kw).samples, tri.sample(5, **kw).samples
        except Exception as e:  # a sampler this tree lacks is a row, not a failed check
            rows[f"{sampler} w={w}"] = f"{type(e).__name__}: {e}"[:120]
            continue
        rows[f"{sampler} w={w}"] = float(np.abs(a - b).max())
    diffs = [v for v in rows.values() if isinstance(v, float)]
    return {"ok": bool(diffs) and max(diffs) <= 1e-4, "mode": mode, "max_abs_diff": rows}


def _register_cuda_checks() -> None:
    import gpu_check_cuda  # beside this script, on sys.path when it runs

    for name, seconds, fn in gpu_check_cuda.CHECKS:
        check(name, seconds)(fn)


_register_cuda_checks()


# -- driver ---------------------------------------------------------------------------------
def _child(fn, ctx, conn) -> None:
    try:
        res = fn(ctx)
    except Exception as e:  # a failing check reports, it does not stop the others
        res = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0],
               "traceback": traceback.format_exc(limit=4)}
    conn.send(res)
    conn.close()


def run_check(fn, seconds: float, ctx: dict) -> dict:
    parent, child = mp.get_context("fork").Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=_child, args=(fn, ctx, child), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    child.close()
    res = {"ok": False, "error": f"timed out after {seconds:.0f} s"}
    if parent.poll(seconds):
        try:
            res = parent.recv()
        except EOFError:
            res = {"ok": False, "error": f"the check's process died (exit code {proc.exitcode})"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="run only the checks with a CPU meaning")
    ap.add_argument("--prepare", type=Path, default=None, help="write model + step graph here and exit")
    ap.add_argument("--assets", type=Path, default=None, help="a --prepare folder (when onnx is missing)")
    ap.add_argument("--only", default=None, help="comma list of check names")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_check.json)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all checks together")
    args = ap.parse_args(argv)
    if args.prepare is not None:
        print(prepare(args.prepare, variants=True))
        return 0
    work = Path(tempfile.mkdtemp(prefix="ddpm-gpu-check-"))
    t0 = time.perf_counter()
    try:
        model = prepare(args.assets if args.assets is not None else work,
                        variants=not args.cpu_dry_run and args.assets is None and _has("onnx"))
        cuda = has_cuda()
        only = set(args.only.split(",")) if args.only else None
        ctx = {"model": model}
        results = {}
        deadline = t0 + args.budget
        for name, seconds, cpu_meaning, fn in CHECKS:
            if only is not None and name not in only:
                continue
            left = deadline - time.perf_counter()
            if not cpu_meaning and (args.cpu_dry_run or not cuda):
                results[name] = {"ok": None, "skipped": NO_CUDA if not cuda else "not run: --cpu-dry-run"}
            elif left < 10:
                results[name] = {"ok": False, "error": f"not run: the {args.budget:.0f} s budget is spent"}
            else:
                results[name] = run_check(fn, min(seconds, left), ctx)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "cuda": cuda, "cpu_dry_run": args.cpu_dry_run, "seconds": round(time.perf_counter() - t0, 1),
              "checks": results}
    out = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else
                       Path(tempfile.gettempdir()) / "gpu_check.json")
    from ddpm._io import atomic_write_bytes

    atomic_write_bytes(out, (json.dumps(report, indent=1, default=str) + "\n").encode())
    for name, r in results.items():
        state = {True: "PASS", False: "FAIL", None: "----"}[r.get("ok")]
        detail = r.get("skipped") or r.get("error") or ", ".join(
            f"{k}={_short(v)}" for k, v in r.items() if k not in ("ok", "seconds", "traceback"))
        print(f"{state} {name:<28} {r.get('seconds', 0):>6.1f}s  {detail}"[:160])
    failed = [n for n, r in results.items() if r.get("ok") is False]
    print(f"{len(results) - len(failed)}/{len(results)} not failed in {report['seconds']} s; wrote {out}")
    return 1 if failed else 0


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in list(v.items())[:4]) + "}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
