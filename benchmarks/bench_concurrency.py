"""Concurrent sampling on one shared Sampler: one request shape vs mixed shapes.

The workload of issue 17: C client threads each send R requests to one Sampler (the
bundled digits model unless --model), either all the same shape (n=16, guidance 3) or
mixed (n 1..32, batch sizes, labels and guidance drawn from a seeded generator). Reported
per workload: image-steps/s (sum of n * steps over completed requests / wall time), ORT
sessions created (counted at onnxruntime.InferenceSession), request latency p50/p95, and
resident memory after the run. Uses only the public API (Sampler.from_path / sample), so
``--before TREE`` runs the same script against another checkout (e.g. a
``git worktree add /tmp/before <commit>``) in a subprocess of the same invocation and
puts both in one result file, measured side by side.

    python benchmarks/bench_concurrency.py --out benchmarks/results/concurrency_cpu.json \\
        --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

SINGLE = {"n": 16, "guidance": 3.0, "batch_size": None, "labels": None}


def mixed_requests(count: int, seed: int, classes: int) -> list[dict]:
    rng = random.Random(seed)
    reqs = []
    for _ in range(count):
        n = rng.randint(1, 32)
        reqs.append({
            "n": n,
            "guidance": rng.choice([1.0, 2.0, 3.0]),
            "batch_size": rng.choice([None, 4, 8, 16]),
            "labels": rng.choice([None, rng.randrange(classes)]),
        })
    return reqs


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def count_sessions() -> list[int]:
    """Patch onnxruntime.InferenceSession to count constructions (any runtime version)."""
    import onnxruntime as ort

    counter = [0]
    real = ort.InferenceSession

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            counter[0] += 1
            super().__init__(*a, **kw)

    ort.InferenceSession = Counted
    return counter


def run_workload(sampler, requests: list[list[dict]], steps: int, max_seconds: float) -> dict:
    latencies: list[float] = []
    image_steps = [0]
    lock = threading.Lock()
    t_end = time.perf_counter() + max_seconds

    def client(reqs: list[dict]) -> None:
        for k, r in enumerate(reqs):
            if time.perf_counter() > t_end:
                return  # out of time: stop issuing (in-flight work still finishes)
            t = time.perf_counter()
            sampler.sample(r["n"], steps=steps, seed=k, labels=r["labels"], guidance=r["guidance"],
                           batch_size=r["batch_size"])
            with lock:
                latencies.append(time.perf_counter() - t)
                image_steps[0] += r["n"] * steps

    threads = [threading.Thread(target=client, args=(reqs,)) for reqs in requests]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests_done": len(lat),
        "requests_sent_max": sum(len(r) for r in requests),
        "wall_s": round(wall, 2),
        "image_steps_per_s": round(image_steps[0] / wall, 1),
        "latency_p50_s": round(lat[len(lat) // 2], 2) if lat else None,
        "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2) if lat else None,
    }


def soak(args) -> dict:
    """The mixed workload round after round for ``--soak`` seconds, RSS sampled each round."""
    counter = count_sessions()
    from ddpm.runtime import Sampler, default_model_path

    s = Sampler.from_path(args.model or str(default_model_path()), num_threads=args.ort_threads,
                          **_engine_options(args))
    t0, trace, rounds = time.perf_counter(), [], 0
    while time.perf_counter() - t0 < args.soak:
        flat = mixed_requests(args.clients * args.requests, args.seed + rounds, s.contract.num_classes)
        row = run_workload(s, [flat[c :: args.clients] for c in range(args.clients)], args.steps,
                           args.soak - (time.perf_counter() - t0))
        rounds += 1
        trace.append({"t_s": round(time.perf_counter() - t0, 1), "rss_mib": round(rss_mib(), 1),
                      "sessions_created": counter[0], "image_steps_per_s": row["image_steps_per_s"]})
    first = next((r for r in trace if r["t_s"] >= 60), trace[0])
    return {"soak_s": args.soak, "rounds": rounds, "trace": trace,
            "rss_end_over_rss_at_1min": round(trace[-1]["rss_mib"] / first["rss_mib"], 3)}


def _engine_options(args) -> dict:
    """Engine options given on the command line (only then: older checkouts lack them)."""
    return {} if args.pad_slack is None else {"pad_slack": args.pad_slack}


def measure(args) -> dict:
    """Both workloads in this interpreter, against whatever ddpm is importable."""
    counter = count_sessions()
    from ddpm.runtime import Sampler, default_model_path

    model = args.model or str(default_model_path())
    s = Sampler.from_path(model, num_threads=args.ort_threads, **_engine_options(args))
    classes = s.contract.num_classes
    rows = {}
    rss0 = rss_mib()
    for name in ("single", "mixed"):
        if name == "single":
            reqs = [[SINGLE] * args.requests for _ in range(args.clients)]
        else:
            flat = mixed_requests(args.clients * args.requests, args.seed, classes)
            reqs = [flat[c :: args.clients] for c in range(args.clients)]
        before = counter[0]
        row = run_workload(s, reqs, args.steps, args.max_seconds)
        row["sessions_created"] = counter[0] - before
        row["rss_after_mib"] = round(rss_mib(), 1)
        rows[name] = row
    import ddpm

    return {
        "code": str(Path(ddpm.__file__).parent.parent),
        "rss_at_open_mib": round(rss0, 1),
        "workloads": rows,
        "mixed_over_single": round(rows["mixed"]["image_steps_per_s"] / rows["single"]["image_steps_per_s"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model.onnx (default: the bundled digits model)")
    ap.add_argument("--clients", type=int, default=8, help="client threads")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the mixed workload")
    ap.add_argument("--ort-threads", type=int, default=None, help="Sampler num_threads (default: cores)")
    ap.add_argument("--pad-slack", type=float, default=None, help="ORT engine pad_slack (1 = off)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop issuing requests after this")
    ap.add_argument("--before", default=None, help="another checkout to measure in the same run")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("--soak", type=float, default=0.0,
                    help="instead: run the mixed workload for this many seconds, tracing RSS")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(soak(args) if args.soak else measure(args)))
        return
    from ddpm.cpuinfo import cpu_facts

    result = {
        "command": "python benchmarks/bench_concurrency.py " + " ".join(sys.argv[1:]),
        "machine": {**cpu_facts(), "loadavg_at_start": list(os.getloadavg())},
        "workload": {"clients": args.clients, "requests_per_client": args.requests, "steps": args.steps,
                     "single": SINGLE, "mixed": "n 1..32, guidance {1,2,3}, batch_size {None,4,8,16}, "
                     f"labels None or one class, seed {args.seed}"},
    }
    runs = {}
    trees = [("after", None)] + ([("before", args.before)] if args.before else [])
    for name, tree in trees:  # each in a fresh interpreter: same start state for both
        env = dict(os.environ)
        if tree:
            env["PYTHONPATH"] = str(Path(tree).resolve())
        child = [sys.executable, __file__, "--child", *_child_args(args)]
        p = subprocess.run(child, capture_output=True, text=True, env=env, cwd=tree or None, timeout=1200)
        if p.returncode:
            sys.exit(f"{name} run failed:\n{p.stderr[-3000:]}")
        runs[name] = json.loads(p.stdout.strip().splitlines()[-1])
        rev = subprocess.run(["git", "-C", str(tree or Path(__file__).parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True)
        runs[name]["commit"] = rev.stdout.strip() or None  # dirty trees: see `code`
        print(name, json.dumps(runs[name].get("workloads") or runs[name]["trace"][-1]), flush=True)
    result["runs"] = runs
    text = json.dumps(result, indent=1)
    if args.out:
        from ddpm._io import atomic_write_bytes

        atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)


def _child_args(args) -> list[str]:
    out = ["--clients", str(args.clients), "--requests", str(args.requests), "--steps", str(args.steps),
           "--seed", str(args.seed), "--max-seconds", str(args.max_seconds), "--soak", str(args.soak)]
    if args.model:
        out += ["--model", str(Path(args.model).resolve())]
    if args.ort_threads:
        out += ["--ort-threads", str(args.ort_threads)]
    if args.pad_slack is not None:
        out += ["--pad-slack", str(args.pad_slack)]
    return out


if __name__ == "__main__":
    main()
