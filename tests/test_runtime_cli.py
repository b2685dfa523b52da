"""``ddpm-run``: outputs, and every bad input -> one ``error:`` line, exit 2, no output files.

Uses the shared exported tiny models from conftest (8x8, 1 channel, 3 classes when
conditional). Most cases run in-process through click's CliRunner; the ones where a native
library could print its own noise (a corrupt file, a missing CUDA provider) also run as a
real subprocess so stderr is exactly what a user would see.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm.runtime import Sampler
from ddpm.runtime.cli import main


@pytest.fixture(scope="module")
def models(exported) -> dict[str, Path]:
    return {"uncond": exported("ddpm", False)["onnx"], "cond": exported("cond", True)["onnx"]}


@pytest.fixture(scope="module")
def broken(models, tmp_path_factory) -> dict[str, Path]:
    """A model.onnx without the contract and one cut in half."""
    import onnx

    d = tmp_path_factory.mktemp("broken")
    m = onnx.load(str(models["uncond"]))
    del m.metadata_props[:]
    onnx.save(m, str(d / "no_contract.onnx"))
    data = models["uncond"].read_bytes()
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "garbage.onnx").write_bytes(b"\x08\x07this is not an onnx file" * 10)
    return {"no_contract": d / "no_contract.onnx", "truncated": d / "truncated.onnx", "garbage": d / "garbage.onnx"}


def run(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big")  # IHDR intact
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_writes_grid_npz_and_trajectory(models, tmp_path):
    out, npz, traj = tmp_path / "s.png", tmp_path / "sub" / "s.npz", tmp_path / "t.png"
    r = run(["--model", models["cond"], "-n", 5, "--steps", 4, "--seed", 3, "--batch-size", 2,
             "--threads", 1, "--out", out, "--npz", npz, "--trajectory", traj])
    assert r.exit_code == 0, r.output
    assert "5 images 8x8x1" in r.stdout and "images/s" in r.stdout
    # ceil(sqrt 5)=3 per row, 8px + 2px pad: 32 x 22, enlarged 16x so the long side is 512 px
    assert _png_size(out) == (16 * (3 * 10 + 2), 16 * (2 * 10 + 2))
    # 4 steps -> 4 strip columns + the final image; 2 rows (x_t, x0) for each of 4 samples
    # (82 px tall before scaling: 7x), plus the label margins on the top and left
    w, h = _png_size(traj)
    assert h > 7 * (8 * 10 + 2) and w > 7 * (5 * 10 + 2)
    with np.load(npz) as z:
        want = Sampler.from_path(models["cond"], num_threads=1).sample(
            5, steps=4, seed=3, guidance=3.0  # ddpm-run's default guidance for conditional models
        )
        np.testing.assert_array_equal(z["samples"], want.samples)
        np.testing.assert_array_equal(z["labels"], [0, 1, 2, 0, 1])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["s.npz", "s.png", "sub", "t.png"]


def test_label_and_ddim_options_reach_the_sampler(models, tmp_path):
    out = tmp_path / "x.png"
    r = run(["--model", models["cond"], "-n", 2, "--steps", 3, "--sampler", "ddim", "--eta", 0.3,
             "--label", 2, "--guidance", 1.5, "--out", out, "--npz", tmp_path / "x.npz"])
    assert r.exit_code == 0, r.output
    want = Sampler.from_path(models["cond"]).sample(2, steps=3, sampler="ddim", eta=0.3, labels=2, guidance=1.5)
    with np.load(tmp_path / "x.npz") as z:
        np.testing.assert_array_equal(z["samples"], want.samples)


def _case(models, broken, tmp_path, name):
    out = tmp_path / "out.png"
    m = {"uncond": models["uncond"], "cond": models["cond"]}
    cases = {
        "steps0": (["--model", m["uncond"], "--steps", 0], "--steps: steps must be an integer in 1..1000"),
        "steps_gt_T": (["--model", m["uncond"], "--steps", 1001], "--steps: steps must be an integer in 1..1000"),
        "steps_not_int": (["--model", m["uncond"], "--steps", "ten"], "'ten' is not a valid integer"),
        "n0": (["--model", m["uncond"], "-n", 0], "-n: n must be an integer >= 1"),
        "label_out_of_range": (["--model", m["cond"], "--label", 4], "--label: label 4 is out of range"),
        "label_negative": (["--model", m["cond"], "--label", -1], "labels in 0..2"),
        "label_on_uncond": (["--model", m["uncond"], "--label", 0], "unconditional"),
        "guidance_on_uncond": (["--model", m["uncond"], "--guidance", 2], "--guidance: guidance 2.0 needs a class-conditional"),
        "eta_with_ddpm": (["--model", m["uncond"], "--eta", 0.5], "--eta: eta=0.5 applies only to sampler 'ddim'"),
        "cuda_without_provider": (["--model", m["uncond"], "--device", "cuda"], 'ddpm-toolkit[gpu]'),
        "unknown_backend": (["--model", m["uncond"], "--backend", "tf"], "ort, torchscript, torch"),
        "no_contract": (["--model", broken["no_contract"]], "no ddpm contract"),
        "truncated": (["--model", broken["truncated"]], "re-export"),
        "garbage": (["--model", broken["garbage"]], "re-export"),
        "missing_model": (["--model", tmp_path / "nope.onnx"], "not found"),
        "out_parent_is_file": (["--model", m["uncond"], "--out", broken["garbage"] / "x.png"], "not a folder"),
        "out_is_dir": (["--model", m["uncond"], "--out", tmp_path], "is a folder"),
        "npz_unwritable": (["--model", m["uncond"], "--npz", "/proc/x.npz"], "cannot write --npz"),
    }
    args, match = cases[name]
    if "--out" not in args:
        args = [*args, "--out", out]
    return args, match, out


ERROR_CASES = [
    "steps0", "steps_gt_T", "steps_not_int", "n0", "label_out_of_range", "label_negative",
    "label_on_uncond", "guidance_on_uncond", "eta_with_ddpm", "cuda_without_provider",
    "unknown_backend", "no_contract", "truncated", "garbage", "missing_model",
    "out_parent_is_file", "out_is_dir", "npz_unwritable",
]


@pytest.mark.parametrize("name", ERROR_CASES)
def test_bad_input_one_line_exit_2_no_output(models, broken, tmp_path, name):
    args, match, out = _case(models, broken, tmp_path, name)
    before = set(tmp_path.rglob("*"))
    r = run(args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert match in lines[0]
    assert "Traceback" not in r.output and r.stdout == ""
    assert not out.exists() and set(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("name", ["truncated", "cuda_without_provider", "no_contract"])
def test_bad_input_in_a_real_process_prints_one_line(models, broken, tmp_path, name):
    args, match, out = _case(models, broken, tmp_path, name)
    p = subprocess.run(
        [sys.executable, "-m", "ddpm.runtime.cli", *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 2
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("error: ") and match in p.stderr
    assert not out.exists()


def test_missing_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    import ddpm.runtime.assets as assets

    monkeypatch.setattr(assets, "BUNDLED_MODEL", "not-shipped.onnx")
    r = run(["--out", tmp_path / "x.png"])
    assert r.exit_code == 2
    assert "bundled model ddpm/assets/not-shipped.onnx is missing" in r.stderr
    assert r.stderr.startswith("error: --model: ") and "path of an exported model.onnx" in r.stderr
    r = run(["--backend", "torch", "--out", tmp_path / "x.png"])
    assert r.exit_code == 2 and "ONNX only" in r.stderr


def test_both_onnxruntime_wheels_installed_is_refused(monkeypatch):
    import importlib.metadata

    from ddpm.errors import BackendError
    from ddpm.runtime.ort_session import import_ort

    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda d: "1.20.0" if d.startswith("onnxruntime") else real(d)
    )
    with pytest.raises(BackendError, match="both onnxruntime and onnxruntime-gpu") as e:
        import_ort()
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in str(e.value)


def test_help_is_instant_and_imports_no_engine():
    code = (
        "import sys\n"
        "from ddpm.runtime.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'tqdm', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--steps" in p.stdout and "--trajectory" in p.stdout


def test_info_describes_an_artifact_and_refuses_other_files(models, tmp_path):
    r = run(["--info", models["cond"]])
    assert r.exit_code == 0, r.output
    assert "preset: cond" in r.stdout and "classes: 3" in r.stdout
    assert "schedule" in r.stdout and "num_train_timesteps" in r.stdout
    assert "exporter:" in r.stdout and "model.onnx" in r.stdout
    assert not list(tmp_path.iterdir())  # --info samples nothing and writes nothing
    other = tmp_path / "notes.txt"
    other.write_text("not a model")
    r = run(["--info", other])
    assert r.exit_code == 2
    assert r.output.startswith("error:") and "not a ddpm artifact" in r.output
