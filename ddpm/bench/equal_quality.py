"""Speed at equal quality: images/s of each sampler at the fewest steps reaching DDPM-50.

Reads a ``benchmarks/quality_curve.py`` result (quality of each sampler at each step count,
judged by the CNN and logistic-regression judges). The bar is DDPM at 50 steps (``--ref``)
on the headline (CNN) judge: a sampler's step count qualifies when its unconditional
confident ratio and its conditional label accuracy are both within ``--tolerance`` of the
bar's (the curve's own sampling noise at its image count). Each sampler is then timed at its
fewest qualifying steps on ONNX Runtime CPU, side by side in one run (interleaved repeats,
median), at the CLI defaults (guidance 3 on a conditional model), and reported with its
speed-up over the bar::

    ddpm-bench --equal-quality                       # the checkout's committed curve
    ddpm-bench --equal-quality --curve my_curve.json --out eq.json
    python benchmarks/bench_equal_quality.py         # the same, JSON into benchmarks/results/

Needs only numpy and onnxruntime: the judging happened when the curve was made.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ddpm._io import atomic_path
from ddpm.cpuinfo import cpu_facts
from ddpm.errors import ConfigError

#: The curve committed in a checkout (``benchmarks/results/``), next to the package.
CHECKOUT_CURVE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quality_curve.json"


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
        have = [f"{s}:{n}" for s, n in sorted({(r["sampler"], r["steps"]) for r in rows})]
        raise ConfigError(
            f"the quality curve has no {ref[0]}:{ref[1]} row (it has {', '.join(have) or 'none'}); "
            "pass --ref SAMPLER:STEPS of one of them, or rerun benchmarks/quality_curve.py with it"
        )
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


def parse_args(argv: list[str], prog: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--equal-quality", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--curve", type=Path, default=None,
                    help=f"quality_curve.py JSON [default: {CHECKOUT_CURVE} when present]")
    ap.add_argument("--model", default=None,
                    help="model to time [default: the curve's own model, else the bundled one]")
    ap.add_argument("--ref", default="ddpm:50", help="SAMPLER:STEPS of the quality bar")
    ap.add_argument("--tolerance", type=float, default=0.02,
                    help="how far below the bar (ratio and accuracy) still counts as equal")
    ap.add_argument("--images", type=int, default=16, help="images per timed call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default: none)")
    return ap.parse_args(argv)


def _check(a: argparse.Namespace) -> tuple[Path, str, int]:
    curve = a.curve or CHECKOUT_CURVE
    if not curve.is_file():
        raise ConfigError(
            f"no quality curve at {str(curve)!r}; make one with `python benchmarks/quality_curve.py` "
            "(needs the [bench] extra) and pass it with --curve FILE"
        )
    name, _, steps = a.ref.partition(":")
    if not name or not steps.isdigit() or int(steps) < 1:
        raise ConfigError(f"--ref {a.ref!r} is not SAMPLER:STEPS; pass e.g. --ref ddpm:50")
    for flag, value in (("--images", a.images), ("--repeats", a.repeats), ("--threads", a.threads)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if not (math.isfinite(a.tolerance) and a.tolerance >= 0):
        raise ConfigError(f"--tolerance must be a number >= 0, got {a.tolerance}")
    return curve, name, int(steps)


def _read_curve(path: Path) -> dict:
    try:
        curve = json.loads(path.read_text())
        rows = curve["rows"]
        for r in rows:
            r["sampler"], r["steps"], r["unconditional"]["cnn_ratio"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{str(path)!r} is not a quality curve from benchmarks/quality_curve.py "
            f"({type(e).__name__}: {e}); pass the JSON that script wrote"
        ) from None
    return curve


def run(argv: list[str] | None = None, log=print, prog: str = "ddpm-bench --equal-quality") -> dict[str, Any]:
    """Run the view for command-line ``argv``; returns the result (written to --out)."""
    a = parse_args(sys.argv[1:] if argv is None else list(argv), prog)
    path, name, steps = _check(a)
    curve = _read_curve(path)
    choice = fewest_steps(curve, (name, steps), a.tolerance)
    model = a.model or curve.get("model")
    if model and a.model is None and not Path(model).exists():
        model = None  # the curve was made elsewhere; its model path means nothing here
    # The bar itself is timed too (first), whatever its own sampler's fewest steps are.
    runs = [(name, steps), *((k, c["steps"]) for k, c in choice.items()
                             if (k, c["steps"]) != (name, steps))]
    times = time_samplers(runs, model, a.images, a.repeats, a.threads)
    ref_ips = a.images / statistics.median(times[0])
    rows = []
    log(f"equal quality: CNN-judge ratio and label accuracy within {a.tolerance} of {name}-{steps} "
        f"({curve.get('images', '?')} images per curve point), ORT CPU, {a.threads} thread(s), "
        f"batch {a.images}")
    log("| sampler | steps | images/s | vs bar |")
    log("|---|---|---|---|")
    for j, (k, n_steps) in enumerate(runs):
        ips = a.images / statistics.median(times[j])
        metrics = choice.get(k, {}) if choice.get(k, {}).get("steps") == n_steps else {}
        rows.append({"sampler": k, "steps": n_steps, "bar": j == 0, **metrics,
                     "images_per_s": ips, "speedup_vs_ref": ips / ref_ips, "seconds": times[j]})
        bar = " (the bar)" if j == 0 else ""
        log(f"| {k} | {n_steps} | {ips:.2f} | {ips / ref_ips:.2f}x{bar} |")
    missing = sorted({r["sampler"] for r in curve["rows"] if r.get("allowed")} - set(choice))
    if missing:
        log(f"never reach the bar on this curve: {', '.join(missing)}")
    result = {
        **cpu_facts(), "python": platform.python_version(),
        "command": " ".join([prog, *(sys.argv[1:] if argv is None else argv)]),
        "load_avg": os.getloadavg(), "curve": str(path), "curve_images": curve.get("images"),
        "model": model, "ref": a.ref, "tolerance": a.tolerance, "images": a.images,
        "repeats": a.repeats, "threads": a.threads, "guidance": curve.get("guidance"),
        "never_reach": missing, "rows": rows,
    }  # fmt: skip
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(a.out) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {a.out}")
    return result
