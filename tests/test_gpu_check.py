"""``benchmarks/gpu_check.py --cpu-dry-run``: the CPU half of the GPU check runs in CI.

It must pass every check that has a CPU meaning (ORT CPU EP device loop vs host loop, CUDA
graphs refused on the CPU, the Triton kernel under the interpreter vs the torch reference,
in-kernel Philox vs ddpm/noise.py bit for bit, the --update triton loop on the CPU EP +
interpreter vs the host loop), report the CUDA-only ones as not run (never
as passed), and write one JSON to ``$OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]  # the GPU check's CPU dry run (exports and sampling)

ROOT = Path(__file__).resolve().parents[1]
CPU_CHECKS = {"env", "device_loop_cpu_ep", "cuda_graph_refused_on_cpu", "triton_vs_reference",
              "philox_vs_ddpm_noise", "triton_loop_vs_host"}


def test_gpu_check_cpu_dry_run_passes_its_cpu_checks_and_writes_json(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # the script sets it per check, in the check's process
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry-run"],
                       capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["checks"]
    assert report["cpu_dry_run"] is True
    for name in CPU_CHECKS:
        assert checks[name]["ok"] is True, (name, checks[name])
    assert checks["triton_vs_reference"]["mode"] == "interpreter"
    assert set(checks["triton_vs_reference"]["max_ulp"]) >= {"ddpm", "ddim"}
    assert all(checks["philox_vs_ddpm_noise"]["bit_identical"].values())
    assert checks["triton_loop_vs_host"]["mode"] == "interpreter"
    gpu_only = set(checks) - CPU_CHECKS
    assert gpu_only >= {"update_bandwidth", "cuda_graph_on_off", "timings", "ort_cuda_device_loop_vs_cpu"}
    if not report["cuda"]:
        assert all(checks[n] == {"ok": None, "skipped": "not run: no CUDA"} for n in gpu_only)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(checks) + 1 and str(tmp_path / "gpu_check.json") in lines[-1]
