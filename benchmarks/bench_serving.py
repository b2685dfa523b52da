"""Serving overhead: ddpm_sampler on tritonserver vs the same requests on a local Sampler.

For 1, 4 and 16 concurrent clients, the same list of requests is run twice, side by side in
one process: (a) client threads calling one in-process :class:`ddpm.runtime.Sampler`, (b)
client threads each with its own tritonclient gRPC client against ``ddpm_sampler`` served by
the bundled ``tritonserver`` on 127.0.0.1 (a repository written by
:func:`ddpm.serve.repository.write_sampler_model`, as ``ddpm-serve`` does). Both sides use
the same ORT settings (``--threads`` intra-op threads per request); the server runs as many
requests at once as it has workers (default: its dynamic batch size). Each level alternates
local and server ``--rounds`` times so drifting load from other processes hits both alike. Reported: images/s, p50/p95
request latency, and the server/local throughput ratio per concurrency.

Needs the serve extra (nvidia-pytriton, numpy<2)::

    python benchmarks/bench_serving.py --requests 32 --steps 20 --out benchmarks/results/serving_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _requests(count: int, n: int, steps: int) -> list[dict]:
    return [{"seed": i, "n": n, "steps": steps, "label": i % 10} for i in range(count)]


def _percentiles(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat)
    return {"p50_ms": round(float(np.percentile(a, 50)) * 1e3, 1),
            "p95_ms": round(float(np.percentile(a, 95)) * 1e3, 1)}


def _pool(runs: list[dict]) -> dict:
    """Rounds joined: images over total wall time; percentiles over every request."""
    lat = [x for r in runs for x in r.pop("latencies")]
    images = sum(r["images_per_s"] * r["wall_s"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    return {"images_per_s": round(images / wall, 2), "wall_s": round(wall, 2),
            "rounds": len(runs), **_percentiles(lat)}


def _drive(clients: int, reqs: list[dict], call) -> dict:
    """Run ``reqs`` from ``clients`` threads (each takes the next request when done)."""
    lock, it, lat = threading.Lock(), iter(reqs), []

    def worker() -> None:
        while True:
            with lock:
                req = next(it, None)
            if req is None:
                return
            t0 = time.perf_counter()
            call(req)
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    images = sum(r["n"] for r in reqs)
    return {"images_per_s": images / wall, "wall_s": wall, "latencies": lat}


def _grpc_call(port: int):
    import tritonclient.grpc as grpc

    local = threading.local()

    def call(req: dict) -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = grpc.InferenceServerClient(f"127.0.0.1:{port}")
        ins = []
        for name, value, wire, dtype in (("seed", req["seed"], "UINT64", np.uint64),
                                         ("num_images", req["n"], "INT32", np.int32),
                                         ("steps", req["steps"], "INT32", np.int32),
                                         ("label", req["label"], "INT32", np.int32)):
            t = grpc.InferInput(name, [1, 1], wire)
            t.set_data_from_numpy(np.array([[value]], dtype))
            ins.append(t)
        return local.client.infer("ddpm_sampler", ins).as_numpy("images")

    return call


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    rows = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: rows[k].strip() for k in ("Model name", "Flags") if k in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model.onnx (default: the bundled digits model)")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--n", type=int, default=1, help="images per request")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per request")
    ap.add_argument("--workers", type=int, default=None,
                    help="server requests at once (default: the model's, its max_batch_size)")
    ap.add_argument("--rounds", type=int, default=2, help="local/server alternations per level")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ddpm.artifact import read
    from ddpm.cpuinfo import cpu_facts
    from ddpm.runtime import Sampler, default_model_path
    from ddpm.serve.launch import TritonServer
    from ddpm.serve.repository import write_sampler_model

    load_start = os.getloadavg()
    model = Path(args.model or default_model_path("ort")).resolve()
    sampler = Sampler.from_path(model, num_threads=args.threads)
    reqs = _requests(args.requests, args.n, args.steps)

    def local_call(req: dict) -> np.ndarray:
        return sampler.sample(req["n"], steps=req["steps"], seed=req["seed"], labels=req["label"]).images

    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        write_sampler_model(read(model), Path(tmp) / "repo", model_path=str(model),
                            num_threads=args.threads, workers=args.workers)
        with TritonServer(Path(tmp) / "repo") as server:
            remote = _grpc_call(server.grpc_port)
            want = local_call(reqs[0])
            assert np.array_equal(remote(reqs[0])[0], want), "server images differ from local"
            _drive(2, reqs[:4], local_call)  # warm-up both sides (ORT arenas, thread pools)
            _drive(2, reqs[:4], remote)
            for c in levels:
                loc_runs, srv_runs = [], []
                for _ in range(args.rounds):
                    loc_runs.append(_drive(c, reqs, local_call))
                    srv_runs.append(_drive(c, reqs, remote))
                loc, srv = _pool(loc_runs), _pool(srv_runs)
                rows.append({"clients": c, "local": loc, "server": srv,
                             "throughput_ratio": round(srv["images_per_s"] / loc["images_per_s"], 3)})
                print(f"{c:>3} clients  local {loc['images_per_s']:7.2f} img/s p50 {loc['p50_ms']:7.1f} "
                      f"p95 {loc['p95_ms']:7.1f} ms | server {srv['images_per_s']:7.2f} img/s "
                      f"p50 {srv['p50_ms']:7.1f} p95 {srv['p95_ms']:7.1f} ms | "
                      f"ratio {rows[-1]['throughput_ratio']:.3f}", flush=True)
    import onnxruntime

    result = {
        **cpu_facts(), "lscpu": _lscpu(), "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "model": model.name, "request": {"n": args.n, "steps": args.steps, "threads": args.threads,
                                         "requests_per_level": args.requests},
        "server_workers": args.workers or "max_batch_size", "rows": rows,
        "notes": "same requests, same process; each level alternates local and server rounds; "
                 "server = tritonserver 2.51 (nvidia-pytriton) ddpm_sampler over gRPC on 127.0.0.1",
    }
    if args.out:
        from ddpm._io import atomic_write_bytes

        atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
