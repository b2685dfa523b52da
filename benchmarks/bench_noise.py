"""ddpm.noise.randn on CPU: compiled core (ddpm._philox) vs the pure-numpy path.

    python benchmarks/bench_noise.py             # 64x3x32x32, median of 41 calls per row
    python benchmarks/bench_noise.py --reps 101

Rows: the whole ``randn`` draw on each backend, and its parts (Philox words alone, the C
uniform prefix, the numpy log/sqrt/cos finish). Each row reports the median wall time
(perf_counter) and the median CPU time of this thread (thread_time), which is less
disturbed when other processes share the cores. Results go to
benchmarks/results/noise_cpu.json with the command line, the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ddpm import noise
from ddpm._io import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (64, 3, 32, 32)
SEED, STEP = 1234, 10


def cpu_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["simd_flags"] = sorted(flags & {"sse4_2", "avx", "avx2", "fma", "avx512f"})
                break
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def bench(fn, reps: int) -> dict:
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        c1, t1 = time.thread_time(), time.perf_counter()
        wall.append((t1 - t0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
    q = np.quantile(wall, [0.5, 0.2, 0.8])
    return {"median_ms": round(float(q[0]), 4), "p20_ms": round(float(q[1]), 4),
            "p80_ms": round(float(q[2]), 4), "thread_cpu_median_ms": round(float(np.median(cpu)), 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=41, help="timed calls per row (median)")
    ap.add_argument("--out", type=Path, default=RESULTS / "noise_cpu.json")
    args = ap.parse_args(argv)
    n = int(np.prod(SHAPE))
    c = noise._c
    rows: dict[str, dict] = {}

    def randn_numpy():
        saved, noise._c = noise._c, None
        try:
            return noise.randn(SHAPE, seed=SEED, step=STEP)
        finally:
            noise._c = saved

    rows["randn_numpy"] = bench(randn_numpy, max(5, args.reps // 4))
    lo = np.arange(n, dtype=np.uint32)
    rows["philox_words_numpy"] = bench(lambda: noise.philox_r0_r1(lo, 0, SEED, STEP), max(5, args.reps // 4))
    if c is not None:
        rows["randn_c"] = bench(lambda: noise.randn(SHAPE, seed=SEED, step=STEP), args.reps)
        r0, r1 = np.empty(n, np.uint32), np.empty(n, np.uint32)
        u1, u2 = np.empty(n, np.float32), np.empty(n, np.float32)
        simd = c.simd()
        rows[f"philox_words_c_{simd}"] = bench(lambda: c.philox(r0, r1, 0, n, SEED, STEP), args.reps)
        rows[f"uniform_pair_c_{simd}"] = bench(lambda: c.uniform_pair(u1, u2, 0, n, SEED, STEP), args.reps)  # fmt: skip
        if simd != "none":
            c.simd(False)
            try:
                rows["philox_words_c_portable"] = bench(lambda: c.philox(r0, r1, 0, n, SEED, STEP), args.reps)  # fmt: skip
            finally:
                c.simd(True)

        def finish():  # what randn does after uniform_pair (on warm, preallocated arrays)
            c.uniform_pair(u1, u2, 0, n, SEED, STEP)
            np.log(u1, out=u1)
            np.multiply(u1, np.float32(-2.0), out=u1)
            np.sqrt(u1, out=u1)
            np.cos(u2, out=u2)
            np.multiply(u1, u2, out=u1)

        rows["uniform_pair_plus_numpy_finish_prealloc"] = bench(finish, args.reps)
        same = np.array_equal(noise.randn(SHAPE, seed=SEED, step=STEP), randn_numpy())
    else:
        same = None
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": cpu_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "backend": noise.BACKEND,
        "simd": c.simd() if c is not None else None,
        "shape": list(SHAPE),
        "elements": n,
        "c_equals_numpy_bitwise": same,
        "notes": [
            "median of --reps calls (numpy rows: reps/4, at least 5); wall = perf_counter, "
            "thread_cpu = time.thread_time of the calling thread; single-threaded",
            "randn_* allocate a fresh output array per call (page faults included)",
        ],
        "rows": rows,
    }
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    width = max(map(len, rows))
    print(f"{n} elements {SHAPE}, backend={noise.BACKEND}, simd={result['simd']}, "
          f"bit-identical={same}")  # fmt: skip
    for name, r in rows.items():
        print(f"  {name:<{width}}  median {r['median_ms']:8.3f} ms   thread-cpu {r['thread_cpu_median_ms']:8.3f} ms")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
