"""ddpm-bench --quick: the benchmark harness runs end to end and writes only where told.

Timings here mean nothing (tiny model, 3 steps, shared CI machine); the tests pin that every
contender runs on the same model with the asked thread count, rows carry the documented
fields and the CPU record, nothing is written outside --out / --work, and bad input is a
one-line error with exit 2. Real numbers come from ``ddpm-bench`` / benchmarks/bench_sampling.py.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.slow]  # benchmark runs

pytest.importorskip("diffusers")

ROWS = ["diffusers_pipeline", "host_loop_torch_eager", "host_loop_ort_default_session", "ddpm_run_ort",
        "ddpm_run_ort_optimized"]
HAVE_OV = importlib.util.find_spec("openvino") is not None


def _tree(path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs}


def test_quick_bench_writes_rows_for_every_contender(tmp_path, monkeypatch):
    from ddpm.bench_cli import main

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "quick.json"
    rows = ROWS + (["ddpm_run_openvino_f32"] if HAVE_OV else [])
    res = CliRunner().invoke(main, ["--quick", "--work", str(tmp_path / "w"), "--out", str(out),
                                    "--contenders", ",".join(rows), "--batches", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [r["contender"] for r in data["rows"]] == rows
    for r in data["rows"]:
        assert r["model"] == "tiny" and r["batch"] == 2 and r["ms_per_step"] > 0 and r["threads"] == 1
        assert r["speedup_vs_diffusers"] > 0 and r["gflop_per_step"] > 0
    assert data["threads"] == 1 and data["gemm_peak_gflops"] > 0 and len(data["load_avg_start"]) == 3
    assert data["cpu"] and data["physical_cores"] >= 1 and isinstance(data["isa"], list)
    assert data["command"].startswith("ddpm-bench --quick")
    assert "| tiny | 2 | ddpm_run_ort |" in res.output
    assert _tree(cwd) == set()  # nothing in the working directory


def test_quick_bench_without_out_writes_no_file(tmp_path, monkeypatch):
    """The smoke test as users run it: no --out means no JSON anywhere, cwd untouched."""
    from ddpm.bench import harness
    from ddpm.bench_cli import main

    monkeypatch.chdir(tmp_path)
    package = os.path.dirname(os.path.dirname(harness.__file__))
    before = _tree(package)
    res = CliRunner().invoke(main, ["--quick", "--work", str(tmp_path / "w"), "--batches", "1",
                                    "--contenders", "ddpm_run_ort", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "JSON not written" in res.output
    assert {p.split(os.sep)[0] for p in _tree(tmp_path)} == {"w"}  # only the --work folder
    assert {p for p in _tree(package) - before if "__pycache__" not in p} == set()


def test_threads_reach_every_contender(tmp_path):
    """--threads is honoured by the bare ORT session too (ORT's default is every CPU)."""
    from ddpm.bench import contenders as bc
    from ddpm.bench import models as bm

    art, _ = bm.load_model("tiny", tmp_path / "w")
    bare = bc._BareOrtEngine(art["onnx"], threads=1)
    assert bare.session.get_session_options().intra_op_num_threads == 1


def test_bad_bench_argument_is_one_line_exit_2(tmp_path):
    from ddpm.bench_cli import main

    for args in (["--contenders", "nope"], ["--batches", "x"], ["--threads", "0"],
                 ["--model-batches", "cifar=8"], ["--model-batches", "tiny"], ["--model-batches", "tiny=0"]):
        res = CliRunner().invoke(main, ["--quick", *args, "--out", str(tmp_path / "x.json")])
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and "Traceback" not in res.output
        assert not (tmp_path / "x.json").exists()


def test_model_batches_override_batches_for_that_model(tmp_path):
    """--model-batches tiny=1 runs the tiny model at batch 1 only, whatever --batches says."""
    from ddpm.bench import harness

    out = tmp_path / "mb.json"
    data = harness.run(["--quick", "--work", str(tmp_path / "w"), "--batches", "2,3",
                        "--model-batches", "tiny=1", "--contenders", "ddpm_run_ort", "--threads", "1",
                        "--out", str(out)], log=lambda *_: None)
    assert [r["batch"] for r in data["rows"]] == [1]
    assert json.loads(out.read_text())["model_batches"] == {"tiny": [1]}
