"""Cost of the per-step NaN/Inf check of the host loop, side by side in one run.

    python benchmarks/bench_nan_check.py                 # bundled digits model, B16 x 50 steps
    python benchmarks/bench_nan_check.py --repeats 15 --threads 1

Two Samplers on the same engine differ only in ``HostLoop.finite_check``; the requests run
in pairs, alternating which goes first, so load drifts on a shared machine hit both alike.
Reports per variant the median wall time and the median process CPU time (all threads;
less disturbed by other processes), the overhead as the median of the paired ratios, and
the check alone (``np.isfinite(x).all()`` on one batch's x, timed directly) against one step, and the check's share of the
check-on requests measured in situ: the time spent inside ``host.all_finite`` during them
(wrapped with a timer) over their wall time. On a shared machine the paired ratios scatter
by several per cent, more than the check costs; the in-situ share resolves it. Writes
benchmarks/results/nan_check_cpu.json with the command, CPU model and ISA flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ddpm._io import atomic_write_bytes
from ddpm.cpuinfo import cpu_model, isa_flags
from ddpm.runtime.loops import host
from ddpm.runtime.sampler import Sampler

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "nan_check_cpu.json"))
    args = ap.parse_args(argv)

    on = Sampler.from_path(None, "ort", "cpu", num_threads=args.threads)
    off = Sampler.from_engine(on.engine)  # same engine and sessions: only the check differs
    off._loop.finite_check = False
    kw = dict(steps=args.steps, seed=0, batch_size=args.batch)
    same = np.array_equal(on.sample(args.batch, **kw).samples, off.sample(args.batch, **kw).samples)
    times: dict[str, list[float]] = {"check_on": [], "check_off": []}
    cpu: dict[str, list[float]] = {"check_on": [], "check_off": []}
    pair = [("check_on", on), ("check_off", off)]
    inside = [0.0]
    check = host.all_finite

    def timed_check(x: np.ndarray) -> bool:
        t0 = time.perf_counter()
        try:
            return check(x)
        finally:
            inside[0] += time.perf_counter() - t0

    host.all_finite = timed_check  # the loop looks the check up per step
    for r in range(args.repeats):
        for name, s in pair if r % 2 == 0 else pair[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            s.sample(args.batch, **kw)
            cpu[name].append(time.process_time() - c0)
            times[name].append(time.perf_counter() - t0)
    host.all_finite = check
    med = {k: float(np.median(v)) for k, v in times.items()}
    in_situ = inside[0] / sum(times["check_on"])
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    paired = np.array(times["check_on"]) / np.array(times["check_off"]) - 1.0
    paired_cpu = np.array(cpu["check_on"]) / np.array(cpu["check_off"]) - 1.0
    rng = np.random.default_rng(1)  # bootstrap: how well the pairs pin the median down
    boot = [np.median(rng.choice(paired, paired.size)) for _ in range(2000)]
    ci = [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])]

    x = np.random.default_rng(0).standard_normal((args.batch, *on.image_shape), np.float32)
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        np.isfinite(x).all()
    check_us = (time.perf_counter() - t0) / reps * 1e6
    step_us = med["check_off"] / args.steps * 1e6

    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "isa_flags": list(isa_flags()), "logical_cpus": os.cpu_count(),
                    "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]},
        "model": "bundled digits.onnx (1x16x16, class-conditional, guidance on: model batch 2B)",
        "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
        "threads": on.engine.threads,
        "same_images_on_and_off": bool(same),
        "median_wall_s": {k: round(v, 4) for k, v in med.items()},
        "median_process_cpu_s": {k: round(v, 4) for k, v in med_cpu.items()},
        "all_wall_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "overhead_wall_median_of_pairs": round(float(np.median(paired)), 4),
        "overhead_wall_median_of_pairs_95ci": ci,
        "overhead_cpu_median_of_pairs": round(float(np.median(paired_cpu)), 4),
        "check_share_in_situ": round(in_situ, 6),
        "check_alone_us_per_step": round(check_us, 2),
        "step_us": round(step_us, 1),
        "check_share_of_step": round(check_us / step_us, 5),
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(json.dumps({k: result[k] for k in ("median_wall_s", "overhead_wall_median_of_pairs",
                                             "overhead_wall_median_of_pairs_95ci", "check_share_in_situ",
                                             "check_alone_us_per_step",
                                             "step_us", "check_share_of_step", "same_images_on_and_off")}))
    return result


if __name__ == "__main__":
    main()
