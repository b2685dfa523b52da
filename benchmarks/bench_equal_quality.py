"""Speed at equal quality: images/s of each sampler at the fewest steps reaching DDPM-50.

Reads a ``benchmarks/quality_curve.py`` result. The bar is DDPM at 50 steps (``--ref``) on the
headline (CNN) judge: a sampler's step count qualifies when its unconditional confident ratio
and its conditional label accuracy are both within ``--tolerance`` of the bar's (the curve's
own sampling noise at its image count). Each sampler is then timed at its fewest qualifying
steps on ONNX Runtime CPU, side by side in one run (interleaved repeats, median), at the CLI
defaults (guidance 3 on a conditional model), and reported with its speed-up over the bar::

    python benchmarks/bench_equal_quality.py --curve benchmarks/results/quality_curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ddpm._io import atomic_path
from ddpm.cpuinfo import cpu_facts

RESULTS = Path(__file__).resolve().parent / "results"


def _metrics(row: dict) -> tuple[float, float]:
    acc = row.get("conditional", {}).get("cnn_accuracy", 1.0)
    return row["unconditional"]["cnn_ratio"], acc


def fewest_steps(curve: dict, ref: tuple[str, int], tol: float) -> dict[str, dict]:
    """{sampler: {"steps", "cnn_ratio", "cnn_accuracy"}} of each sampler's first step count
    (ascending) within ``tol`` of the reference row on both metrics; samplers that never
    reach it are left out."""
    rows = [r for r in curve["rows"] if r.get("allowed")]
    bar = next((r for r in rows if (r["sampler"], r["steps"]) == ref), None)
    if bar is None:
        raise SystemExit(f"the curve has no {ref[0]}-{ref[1]} row; run quality_curve.py with it")
    bar_ratio, bar_acc = _metrics(bar)
    found: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["steps"]):
        ratio, acc = _metrics(r)
        if r["sampler"] not in found and ratio >= bar_ratio - tol and acc >= bar_acc - tol:
            found[r["sampler"]] = {"steps": r["steps"], "cnn_ratio": ratio, "cnn_accuracy": acc}
    return found


def time_samplers(runs: list[tuple[str, int]], model: str | None, n: int, repeats: int,
                  threads: int) -> list[list[float]]:  # fmt: skip
    """Seconds per call of each (sampler, steps), repeats interleaved so that load changes on
    a shared machine hit every sampler alike."""
    from ddpm.runtime import Sampler

    s = Sampler.from_path(model, "ort", num_threads=threads)
    labels = np.arange(n) % s.num_classes if s.num_classes else None
    times: list[list[float]] = [[] for _ in runs]
    s.sample(n, steps=1, sampler=runs[0][0], labels=labels)  # warm-up: sessions per batch
    for _ in range(repeats):
        for j, (sampler, steps) in enumerate(runs):
            t0 = time.perf_counter()
            s.sample(n, steps=steps, sampler=sampler, seed=1, labels=labels)
            times[j].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--curve", type=Path, default=RESULTS / "quality_curve.json")
    ap.add_argument("--ref", default="ddpm:50", help="SAMPLER:STEPS of the quality bar")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--images", type=int, default=16, help="images per timed call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "equal_quality_cpu.json")
    args = ap.parse_args(argv)
    curve = json.loads(args.curve.read_text())
    name, steps = args.ref.split(":")
    choice = fewest_steps(curve, (name, int(steps)), args.tolerance)
    # The bar itself is timed too (first), whatever its own sampler's fewest steps are.
    runs = [(name, int(steps)), *((k, c["steps"]) for k, c in choice.items())]
    times = time_samplers(runs, curve.get("model"), args.images, args.repeats, args.threads)
    ref_ips = args.images / statistics.median(times[0])
    rows = []
    for j, (k, n_steps) in enumerate(runs):
        ips = args.images / statistics.median(times[j])
        rows.append({"sampler": k, "steps": n_steps, "bar": j == 0, **(choice[k] if j else {}),
                     "images_per_s": ips, "speedup_vs_ref": ips / ref_ips, "seconds": times[j]})
        bar = " (the bar)" if j == 0 else ""
        print(f"{k:8s} {n_steps:5d} steps: {ips:7.2f} images/s ({ips / ref_ips:.2f}x){bar}")
    result = {
        **cpu_facts(), "python": platform.python_version(), "command": "python " + " ".join(sys.argv),
        "load_avg": os.getloadavg(), "curve": str(args.curve), "curve_images": curve["images"],
        "ref": args.ref, "tolerance": args.tolerance, "images": args.images,
        "repeats": args.repeats, "threads": args.threads,
        "guidance": curve["guidance"], "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
