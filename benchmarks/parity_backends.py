"""Backend parity on a trained model: ort vs torchscript vs torch, same seed and steps.

Usage: python benchmarks/parity_backends.py RUN_DIR [--out benchmarks/results/parity_NAME.json]
RUN_DIR holds ckpt.pt, model.onnx and model.ts (ddpm-train + ddpm-export). Prints and writes
the max abs difference of the final samples in [-1, 1] for DDPM and DDIM, 50 steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ddpm.runtime import Sampler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("-n", type=int, default=16)
    args = ap.parse_args()
    samplers = {
        b: Sampler.from_path(args.run_dir, backend=b) for b in ("torch", "torchscript", "ort")
    }
    rows = []
    for kind in ("ddpm", "ddim"):
        ref = samplers["torch"].sample(args.n, steps=50, sampler=kind, seed=0, guidance=3.0).samples
        for b in ("torchscript", "ort"):
            got = samplers[b].sample(args.n, steps=50, sampler=kind, seed=0, guidance=3.0).samples
            err = float(np.abs(got - ref).max())
            rows.append({"sampler": kind, "backend": b, "vs": "torch", "max_abs_diff": err})
            print(f"{kind:5s} {b:12s} vs torch: max abs diff {err:.2e}")
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "n": args.n, "steps": 50, "guidance": 3.0, "seed": 0,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
