"""ddpm-bench --equal-quality: the fewest-steps choice, and the view end to end on the
committed quality curve (timings mean nothing here; the fields and the choice do)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ddpm.bench.equal_quality import CHECKOUT_CURVE, fewest_steps
from ddpm.bench_cli import main
from ddpm.errors import ConfigError


def _row(sampler, steps, ratio, acc=1.0, allowed=True):
    return {"sampler": sampler, "steps": steps, "allowed": allowed,
            "unconditional": {"cnn_ratio": ratio}, "conditional": {"cnn_accuracy": acc}}


CURVE = {"rows": [
    _row("ddpm", 10, 0.70), _row("ddpm", 50, 0.95),
    _row("ddim", 5, 0.80), _row("ddim", 10, 0.935), _row("ddim", 20, 0.99),
    _row("dpm++2m", 5, 0.96, acc=0.90), _row("dpm++2m", 10, 0.925), _row("dpm++2m", 20, 0.96),
    _row("mix", 10, 0.99, allowed=False),  # not allowed on this model: never chosen
]}


def test_fewest_steps_is_the_first_step_count_within_tolerance_on_both_metrics():
    got = fewest_steps(CURVE, ("ddpm", 50), tol=0.02)
    assert {k: v["steps"] for k, v in got.items()} == {"ddpm": 50, "ddim": 10, "dpm++2m": 20}
    # dpm++2m-5 has the ratio but not the label accuracy, -10 is 0.025 below the bar;
    # ddim-10 is 0.015 below: equal at tolerance 0.02, not at 0.01.
    assert {k: v["steps"] for k, v in fewest_steps(CURVE, ("ddpm", 50), 0.01).items()} == {
        "ddpm": 50, "ddim": 20, "dpm++2m": 20}
    assert fewest_steps(CURVE, ("ddpm", 50), 0.0)["ddim"]["cnn_ratio"] == 0.99
    with pytest.raises(ConfigError, match="no ddpm:7 row"):
        fewest_steps(CURVE, ("ddpm", 7), 0.02)


def test_the_view_times_each_sampler_at_its_fewest_steps(tmp_path):
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps({**CURVE, "images": 100, "guidance": 3.0, "model": None}))
    out = tmp_path / "eq.json"
    res = CliRunner().invoke(main, ["--equal-quality", "--curve", str(curve), "--images", "2",
                                    "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [(r["sampler"], r["steps"], r["bar"]) for r in data["rows"]] == [
        ("ddpm", 50, True), ("ddim", 10, False), ("dpm++2m", 20, False)]
    assert all(r["images_per_s"] > 0 and len(r["seconds"]) == 1 for r in data["rows"])
    assert data["rows"][0]["speedup_vs_ref"] == 1.0 and data["rows"][1]["cnn_ratio"] == 0.935
    assert data["cpu"] and isinstance(data["isa"], list) and data["never_reach"] == []
    assert data["command"].startswith("ddpm-bench --equal-quality")
    assert "| ddim | 10 |" in res.output


@pytest.mark.skipif(not CHECKOUT_CURVE.is_file(), reason="needs a checkout's benchmarks/results")
def test_the_committed_curve_is_the_default():
    res = CliRunner().invoke(main, ["--equal-quality", "--images", "1", "--repeats", "1",
                                    "--ref", "ddpm:5"])
    assert res.exit_code == 0, res.output
    assert "(the bar)" in res.output and "ddpm-5" in res.output


@pytest.mark.parametrize("args, expected", [
    (["--curve", "{tmp}/none.json"], "no quality curve at"),
    (["--curve", "{tmp}/bad.json"], "is not a quality curve"),
    (["--ref", "ddpm"], "is not SAMPLER:STEPS"),
    (["--images", "0"], "--images must be >= 1"),
    (["--quick"], "different views"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, expected):
    (tmp_path / "bad.json").write_text('{"rows": [{"steps": 3}]}')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = CliRunner().invoke(main, ["--equal-quality", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr
