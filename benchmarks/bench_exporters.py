"""The two ONNX exporters, and the torch-side formats, side by side on every preset.

For each preset (class-conditional where it supports it, random weights, small config at
``--size``) this exports once with the dynamo exporter (``--format onnx,torchscript,pt2``)
and once with the legacy tracer, then measures in one process, interleaved:

- graph: file size, node count, and export seconds for each ONNX exporter;
- parity: max-abs of each graph vs torch eager on the same batch;
- ms per call at batch ``--batch`` on 1 thread: ORT on each ONNX graph, ORT on each
  ``--optimize`` graph, TorchScript, the pt2 program (``torch.export.load``), torch eager,
  and with ``--aoti PRESET,...`` the AOTInductor package (compiling takes minutes).

Each timing is the median of ``--reps`` calls after 3 warm-up calls; the contenders of one
preset are timed round-robin so machine load hits them alike. Writes JSON with the CPU
model and ISA flags (``ddpm.cpuinfo``) and the exact command.

    python benchmarks/bench_exporters.py --out benchmarks/results/exporters_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # conftest's tiny preset configs and checkpoint writer


def _timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _graph_facts(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    return {"bytes": path.stat().st_size, "nodes": len(m.graph.node),
            "constant_nodes": sum(n.op_type == "Constant" for n in m.graph.node)}


def _runners(folder: Path, legacy: Path, batch: dict, aoti: Path | None) -> dict:
    import torch

    from ddpm.artifact import read
    from ddpm.export.spec import model_spec
    from ddpm.export.validate import onnx_runner, pt2_runner, torch_runner, torchscript_runner

    c = read(folder / "model.onnx")
    spec = model_spec(*c.image_shape, c.num_classes)
    run = {
        "ort_dynamo": onnx_runner(folder / "model.onnx", spec),
        "ort_legacy": onnx_runner(legacy / "model.onnx", spec),
        "ort_dynamo_optimized": onnx_runner(folder / "model_optimized.onnx", spec),
        "ort_legacy_optimized": onnx_runner(legacy / "model_optimized.onnx", spec),
        "torchscript": torchscript_runner(folder / "model.ts"),
        "pt2": pt2_runner(folder / "model.pt2"),
    }
    if aoti is not None:
        run["aoti"] = pt2_runner(aoti)
    from ddpm.export.graphs import io_module
    from ddpm.export.sources import load_source

    module = io_module(load_source(folder / "ckpt.pt").module, c.num_classes > 0)
    run["torch_eager"] = torch_runner(module)
    torch.set_num_threads(1)
    return run


def bench_preset(arch: str, size: int, batch_size: int, reps: int, aoti: bool, work: Path) -> dict:
    from conftest import write_checkpoint

    from ddpm.export import export_checkpoint

    conditional = arch != "basic"
    folder, legacy = work / f"{arch}-dynamo", work / f"{arch}-legacy"
    ckpt = write_checkpoint(folder / "ckpt.pt", arch, conditional, image_size=size)
    write_checkpoint(legacy / "ckpt.pt", arch, conditional, image_size=size)
    res_d, t_dyn = _timed(lambda: export_checkpoint(
        ckpt, formats=("onnx", "torchscript", "pt2"), optimize=True, aoti=aoti))
    res_l, t_leg = _timed(lambda: export_checkpoint(
        legacy / "ckpt.pt", formats=("onnx",), onnx_exporter="legacy", opset=18, optimize=True))
    rows = {r.backend: r.max_abs for r in res_d.reports[0].rows}
    rows["onnxruntime-cpu fp32 (legacy)"] = res_l.reports[0].rows[0].max_abs
    rng = np.random.default_rng(0)
    c = res_d.contract
    batch = {"sample": rng.standard_normal((batch_size, *c.image_shape)).astype(np.float32),
             "timestep": rng.integers(0, 1000, batch_size).astype(np.int64)}
    if conditional:
        batch["class_labels"] = rng.integers(0, c.num_classes + 1, batch_size).astype(np.int64)
    runs = _runners(folder, legacy, batch, res_d.paths.get("aoti"))
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(3):
        for fn in runs.values():
            fn(batch)
    for _ in range(reps):
        for k, fn in runs.items():
            times[k].append(_timed(lambda fn=fn: fn(batch))[1])
    ms = {k: round(1e3 * statistics.median(v), 3) for k, v in times.items()}
    return {
        "arch": arch, "conditional": conditional, "image_size": size, "batch": batch_size,
        "export_s": {"dynamo_onnx_ts_pt2_optimized": round(t_dyn, 2),
                     "legacy_onnx_optimized": round(t_leg, 2)},
        "graph": {"dynamo": _graph_facts(folder / "model.onnx"),
                  "legacy": _graph_facts(legacy / "model.onnx"),
                  "dynamo_optimized": _graph_facts(folder / "model_optimized.onnx"),
                  "legacy_optimized": _graph_facts(legacy / "model_optimized.onnx")},
        "parity_max_abs_vs_torch": rows,
        "ms_per_call": ms,
        "ratio_legacy_over_dynamo_ort": round(ms["ort_legacy"] / ms["ort_dynamo"], 3),
        "ratio_legacy_over_dynamo_ort_optimized": round(
            ms["ort_legacy_optimized"] / ms["ort_dynamo_optimized"], 3),
    }


def lscpu() -> dict[str, str]:
    """``lscpu``'s model name and full flag list (empty where lscpu is missing)."""
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    rows = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: rows[k].strip() for k in ("Model name", "Flags") if k in rows}


def main(argv: list[str] | None = None) -> int:
    from conftest import TINY_CONFIGS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(TINY_CONFIGS))
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--aoti", default="", help="comma list of presets to also AOTInductor-compile")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import onnxruntime
    import torch

    from ddpm import cpuinfo

    torch.set_num_threads(1)
    aoti = set(filter(None, args.aoti.split(",")))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.presets.split(","):
            r = bench_preset(arch, args.size, args.batch, args.reps, arch in aoti, Path(tmp))
            print(json.dumps(r), flush=True)
            results.append(r)
    doc = {
        "benchmark": "bench_exporters",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "cpu": cpuinfo.cpu_facts(), "lscpu": lscpu(),
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "threads": 1,
        "note": "random-weight small presets; ms = median of --reps calls, contenders round-robin",
        "results": results,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
