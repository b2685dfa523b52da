"""Host loop vs device loop on the ONNX Runtime CPU EP: which one ``ddpm-run`` defaults to.

Both loops sample the same request (same seed, so the same images) from the bundled digits
model; the device loop runs the v2 step graph written beside a copy of it. Calls alternate
(host, device, host, ...) so machine load hits both alike; the JSON records the CPU model
and ISA flags, the command, every timing and the median ratio.

    python benchmarks/bench_loops.py --batch 16 --steps 50 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/loops_cpu.json")
    args = ap.parse_args(argv)

    from ddpm import cpuinfo
    from ddpm._io import atomic_write_bytes
    from ddpm.export import step_graph
    from ddpm.runtime import Sampler
    from ddpm.runtime.assets import default_model_path

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-loops-"))
    try:
        model = tmp / "model.onnx"
        shutil.copy(default_model_path("ort"), model)
        step_graph.write(model, tmp / "model_step.onnx", validate=False, say=lambda _m: None)
        samplers = {loop: Sampler.from_path(model, num_threads=args.threads, loop=loop)
                    for loop in ("host", "device")}
        kw = dict(steps=args.steps, seed=0, batch_size=args.batch)
        for s in samplers.values():  # sessions built outside the timing
            s.sample(args.batch, **{**kw, "steps": 1})
        times: dict[str, list[float]] = {"host": [], "device": []}
        cpu: dict[str, list[float]] = {"host": [], "device": []}  # less sensitive to other load
        images = {}
        for _ in range(args.repeats):
            for loop, s in samplers.items():
                t0, c0 = time.perf_counter(), time.process_time()
                images[loop] = s.sample(args.batch, **kw).samples
                times[loop].append(time.perf_counter() - t0)
                cpu[loop].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        result = {
            "what": "host loop vs device loop (v2 step graph, IO binding), ORT CPU EP, bundled digits model",
            "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:] if argv is None else argv),
            "cpu": cpuinfo.cpu_facts(),
            "lscpu": _lscpu(),
            "load_average_1_5_15": list(os.getloadavg()),  # a shared box: say how busy it was
            "batch": args.batch, "steps": args.steps, "threads": args.threads,
            "seconds": times, "median_seconds": med,
            "cpu_seconds": cpu, "median_cpu_seconds": med_cpu,
            "device_over_host_time": med["device"] / med["host"],
            "device_over_host_cpu_time": med_cpu["device"] / med_cpu["host"],
            "images_max_abs_diff": float(np.abs(images["host"] - images["device"]).max()),
            "faster": min(med, key=med.get),
        }
        atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
        print(json.dumps({k: result[k] for k in ("median_seconds", "device_over_host_time",
                                                  "median_cpu_seconds", "device_over_host_cpu_time",
                                                  "images_max_abs_diff", "faster")}))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _lscpu() -> dict[str, str]:
    """lscpu's model name and full flag list (the results must name the machine)."""
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "Flags")
    rows = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in rows if k.strip() in keep}


if __name__ == "__main__":
    sys.exit(main())
