"""Where a UNet call spends its time on ONNX Runtime CPU: the ORT profiler, summed per op type.

    python benchmarks/profile_ort.py ~/.cache/ddpm-bench/article/model_optimized.onnx \
        --batch 8 --threads 1 --out benchmarks/results/profile_article_opt_b8_t1.json

Runs the graph ``--warmup`` + ``--runs`` times on a tuned session with the batch fixed (what
``ddpm-run`` uses: one such session per chunk of a split batch), with ORT's profiler on, and
prints kernel time per op type per call, its share, and the node count. Profiling adds its
own overhead (~5-10 %), so compare shares, and take absolute speed from bench_sampling.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def feeds_for(session, batch: int, t: int = 500) -> dict[str, np.ndarray]:
    out = {}
    rng = np.random.default_rng(0)
    for i in session.get_inputs():
        if i.name == "sample":
            shape = [batch, *(int(d) for d in i.shape[1:])]
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif i.name == "timestep":
            out[i.name] = np.full(batch, t, np.int64)
        else:  # class labels: label 0; every label costs the same
            out[i.name] = np.zeros(batch, np.int64)
    return out


def profile(path: str, batch: int, threads: int, warmup: int, runs: int) -> dict:
    from ddpm import artifact
    from ddpm.runtime.ort_session import import_ort, session_options

    ort = import_ort()
    contract = artifact.read(path)
    dim = contract.inputs[0].shape[0]
    so = session_options(ort, threads, fixed_dims={dim: batch} if isinstance(dim, str) else None)
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feeds = feeds_for(sess, batch)
        for _ in range(warmup):
            sess.run(None, feeds)
        t0 = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feeds)
        wall_ms = (time.perf_counter() - t0) / runs * 1e3
        events = json.loads(Path(sess.end_profiling()).read_text())
    total, nodes = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    calls = warmup + runs
    kernel_ms = sum(total.values()) / calls / 1e3
    ops = [
        {"op": op, "ms_per_call": round(us / calls / 1e3, 3), "share": round(us / sum(total.values()), 4),
         "nodes": nodes[op] // calls}
        for op, us in total.most_common()
    ]
    from ddpm.cpuinfo import cpu_facts

    return {**cpu_facts(), "model": str(path), "batch": batch, "threads": threads, "runs": runs,
            "wall_ms_per_call_profiled": round(wall_ms, 2), "kernel_ms_per_call": round(kernel_ms, 2),
            "ops": ops, "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    from ddpm.runtime.ort_session import import_ort

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="an exported model.onnx / model_optimized.onnx / model_int8.onnx")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", default=None, help="also write the table as JSON")
    a = p.parse_args(argv)
    res = profile(a.model, a.batch, a.threads, a.warmup, a.runs)
    res["command"] = " ".join(["python", *sys.argv]) if argv is None else None
    res["onnxruntime"] = import_ort().__version__
    print(f"{Path(a.model).name}: batch {a.batch}, {a.threads} thread(s): "
          f"{res['wall_ms_per_call_profiled']:.1f} ms per call (profiled), kernels {res['kernel_ms_per_call']:.1f} ms")
    for r in res["ops"][: a.top]:
        print(f"  {r['op']:24s} {r['ms_per_call']:8.2f} ms  {100 * r['share']:5.1f} %  {r['nodes']:4d} nodes")
    if a.out:
        from ddpm._io import atomic_write_bytes

        atomic_write_bytes(a.out, (json.dumps(res, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
