"""ddpm-train end to end: every preset trains 30 steps; bad input fails cleanly; --help is light."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from ddpm.models import archs
from ddpm.models.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint
from ddpm.training.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # real ddpm-train processes


def _run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


@pytest.mark.parametrize("arch", archs())
def test_30_step_run_writes_checkpoint_loss_plot_and_samples(tmp_path, arch):
    out = tmp_path / "run"
    # The acceptance command; only the grid is smaller (4 images, still 50 DDIM steps).
    result = _run(["--dataset", "digits", "--arch", arch, "--image-size", "16", "--steps", "30",
                   "--batch-size", "16", "--out", str(out), "--num-samples", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "loss.png").read_bytes().startswith(PNG)
    samples = sorted(out.glob("samples_step*.png"))
    assert [p.name for p in samples] == ["samples_step000030.png"]
    assert samples[0].read_bytes().startswith(PNG)
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temp files

    raw = torch.load(out / "ckpt.pt", weights_only=True)
    assert raw["format"] == FORMAT and raw["step"] == 30 and raw["arch"] == arch
    assert len(raw["losses"]) == 30 and all(math.isfinite(v) for v in raw["losses"])
    assert raw["data"] == {"dataset": "digits", "image_size": 16, "channels": 1,
                           "num_classes": 0, "class_names": [str(i) for i in range(10)],
                           "value_range": [-1.0, 1.0]}
    model, schedule = model_from_checkpoint(load_checkpoint(out / "ckpt.pt"))
    assert schedule.prediction_type == "epsilon"
    with torch.no_grad():
        y = model(torch.zeros(2, 1, 16, 16), torch.tensor([0, 999]))
    assert y.shape == (2, 1, 16, 16) and torch.isfinite(y).all()


def _truncated_checkpoint(path):
    torch.save({"format": FORMAT, "w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_INPUTS = {
    "unknown dataset": (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    "unknown arch": (["--arch", "resnet"], "unknown arch 'resnet'"),
    "image size the UNet cannot halve": (["--arch", "ddpm", "--image-size", "10"], "image size 10"),
    "mnist missing without --download": (
        ["--dataset", "mnist", "--data-root", "{tmp}/nodata"], "mnist not found in"),
    "unwritable --out": (["--out", "{tmp}/afile/run"], "cannot write training outputs"),
    "resume from truncated file": (["--resume", "{tmp}/cut.pt"], "not a readable ddpm checkpoint"),
    "resume from non-checkpoint": (["--resume", "{tmp}/notes.txt"], "not a readable ddpm checkpoint"),
    "resume from missing file": (["--resume", "{tmp}/gone.pt"], "not found"),
    "bad --model-config": (["--model-config", "{base: 3"], "--model-config is not valid JSON"),
    "unknown model field": (["--model-config", '{"depth": 3}'], "unknown config field(s) ['depth']"),
    "conditional preset that cannot be": (["--arch", "basic", "--conditional"], "cannot be class"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    args, expected = BAD_INPUTS[case]
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    _truncated_checkpoint(tmp_path / "cut.pt")
    out = tmp_path / "run"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(out)]
    result = _run(["--steps", "2", "--batch-size", "4", *args])
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert not list(tmp_path.rglob("ckpt.pt")) and not list(tmp_path.rglob("*.png"))


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    cut = _truncated_checkpoint(tmp_path / "ckpt.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm.training.cli", "--resume", str(cut)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {str(cut)!r} is not a readable ddpm checkpoint")


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from ddpm.training.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--dataset", "--conditional", "--resume", "--bf16", "--model-config"):
        assert option in proc.stdout
