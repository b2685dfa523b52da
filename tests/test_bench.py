"""ddpm-bench --quick: the benchmark harness runs end to end and writes its JSON (smoke test).

Timings here mean nothing (tiny model, 3 steps, shared CI machine); the test pins that every
contender runs on the same model, rows carry the documented fields, and bad input is a
one-line error with exit 2. Real numbers come from ``python benchmarks/bench_sampling.py``.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("diffusers")


def test_quick_bench_writes_rows_for_every_contender(tmp_path):
    from ddpm.bench_cli import main

    out = tmp_path / "quick.json"
    res = CliRunner().invoke(main, ["--quick", "--work", str(tmp_path / "w"), "--out", str(out),
                                    "--contenders", "diffusers,torch,ort_default,ddpm_run,ddpm_run_opt",
                                    "--batches", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    names = {r["contender"] for r in data["rows"]}
    assert names == {"diffusers", "torch", "ort_default", "ddpm_run", "ddpm_run_opt"}
    for r in data["rows"]:
        assert r["model"] == "tiny" and r["batch"] == 2 and r["ms_per_step"] > 0
        assert r["speedup_vs_diffusers"] > 0 and r["gflop_per_step"] > 0
    assert data["threads"] == 2 and data["gemm_peak_gflops"] > 0 and len(data["load_avg_start"]) == 3
    assert "| tiny | 2 | ddpm_run |" in res.output


def test_bad_bench_argument_is_one_line_exit_2(tmp_path):
    from ddpm.bench_cli import main

    res = CliRunner().invoke(main, ["--quick", "--contenders", "nope", "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2
    assert "error:" in res.output and "Traceback" not in res.output
