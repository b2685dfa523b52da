"""Training faults: a diverging loss, a full disk at save time, a failing sample grid, absurd
sizes, Ctrl-C. Each ends in one typed error and never loses (or poisons) the last checkpoint.

Tiny runs: the 'basic' preset at 8x8 with 8 channels, a few steps on the bundled digits.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from ddpm import _io
from ddpm.errors import CheckpointError, NonFiniteError, OutputError
from ddpm.training.cli import main as train_cli
from ddpm.training.config import TrainConfig
from ddpm.training.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # training processes interrupted and killed

TINY = {"channels": [8, 8], "kernel_size": 3}


def tiny(out, **changes) -> TrainConfig:
    base = TrainConfig(
        out=str(out), arch="basic", image_size=8, steps=3, batch_size=4, warmup=0, lr=1e-3,
        num_train_timesteps=50, sample_every=0, save_every=0, num_samples=2, sample_steps=2,
        device="cpu", model_config=dict(TINY),
    )
    return dataclasses.replace(base, **changes)


def temp_files(folder) -> list:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, steps=2, save_every=1))  # a good checkpoint at step 2
    good = (out / "ckpt.pt").read_bytes()
    cfg = tiny(out, steps=8, lr=1e30, save_every=1, grad_clip=0.0, seed=1)
    with pytest.raises(NonFiniteError) as e:
        train(cfg)  # a fresh run into the same folder, diverging within a few steps
    message = str(e.value)
    assert "training loss is" in message and "at step" in message
    assert "lower --lr (now 1e+30)" in message and "--grad-clip 1" in message
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in ckpt["model"].values())
    step = int(message.split("at step ")[1].split(":")[0])
    assert ckpt["step"] == step - 1 or (out / "ckpt.pt").read_bytes() == good
    assert not temp_files(out)


def test_resume_from_a_nan_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, steps=2))
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ckpt["model"] = {k: v.clone() for k, v in ckpt["model"].items()}
    next(iter(ckpt["model"].values())).view(-1)[0] = float("nan")
    from ddpm.models.checkpoint import save_checkpoint

    save_checkpoint(out / "ckpt.pt", ckpt)
    with pytest.raises(CheckpointError, match="'model' weights hold NaN/Inf"):
        train(tiny(out, steps=4), resume=out / "ckpt.pt", explicit={"steps"})


def test_full_disk_at_a_later_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    saves = []

    def enospc_on_second_save(event, final):
        if final.name == "ckpt.pt":
            saves.append(final)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", enospc_on_second_save)
    args = ["--arch", "basic", "--image-size", "8", "--steps", "4", "--batch-size", "4",
            "--save-every", "2", "--sample-every", "0", "--num-samples", "2",
            "--sample-steps", "2", "--num-train-timesteps", "50", "--device", "cpu",
            "--model-config", '{"channels": [8, 8], "kernel_size": 3}', "--out", str(out)]
    result = CliRunner().invoke(train_cli, args)
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert "No space left on device" in line and "unchanged" in line
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    assert not temp_files(out)


def test_a_failing_final_grid_never_loses_the_run(tmp_path, monkeypatch):
    def fail_grid(event, final):
        if final.name.startswith("samples_step"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_grid)
    out = tmp_path / "run"
    with pytest.raises(OSError):
        train(tiny(out, steps=3))
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    assert not list(out.glob("samples_step*.png")) and not temp_files(out)


@pytest.mark.parametrize("flag,value,match", [
    ("--batch-size", "1000000000", "--batch-size 1000000000 is above the limit 65536"),
    ("--num-samples", "1000000000", "--num-samples 1000000000 is above the limit 65536"),
    ("--image-size", "100000", "--image-size 100000 is above the limit 1024"),
    ("--num-train-timesteps", "1000000000000", "above the limit 100000"),
    ("--steps", "1000000000000", "--steps 1000000000000 is above the limit"),
    ("--lr", "inf", "--lr must be a finite number"),
    ("--batch-size", "1e9", "'1e9' is not a valid integer"),
])
def test_absurd_sizes_are_refused_before_training(tmp_path, flag, value, match):
    out = tmp_path / "run"
    start = time.perf_counter()
    result = CliRunner().invoke(train_cli, [flag, value, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert match in one_error_line(result)
    assert time.perf_counter() - start < 5 and not out.exists()


def test_grid_tensor_size_is_bounded_before_loading_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_MAX_ELEMENTS", "1000")
    with pytest.raises(Exception, match="the --num-samples grid of shape \\(20, 1, 8, 8\\)"):
        train(tiny(tmp_path / "run", num_samples=20))


def test_sigint_during_training_exits_130_in_one_line_with_no_temp_files(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ddpm.training.cli", "--arch", "basic", "--image-size", "8",
           "--steps", "100000", "--batch-size", "4", "--sample-every", "0", "--save-every", "5",
           "--num-train-timesteps", "50", "--device", "cpu",
           "--model-config", '{"channels": [8, 8], "kernel_size": 3}', "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not (out / "ckpt.pt").exists():  # training is under way once a checkpoint lands
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    # The first SIGINT is taken at the next step boundary (trainer.StopRequest): the steps
    # done so far are saved, then one "saved ...; continue with" line and "interrupted".
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1] == "interrupted", err
    assert lines[-2].startswith(f"saved {out / 'ckpt.pt'} at step ") and "--resume" in lines[-2]
    assert not temp_files(out)
    step = int(lines[-2].split(" at step ")[1].split(";")[0])
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == step  # whole, and current


def test_a_second_sigint_interrupts_at_once():
    from ddpm.training.trainer import StopRequest

    stop = StopRequest(enabled=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested  # the first one only asks
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_absurd_sizes_in_a_resumed_checkpoint_are_refused(tmp_path):
    out = tmp_path / "run"
    train(tiny(out, steps=2))
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ckpt["train_args"]["batch_size"] = "64"
    from ddpm.models.checkpoint import save_checkpoint

    save_checkpoint(out / "ckpt.pt", ckpt)
    with pytest.raises(Exception, match="--batch-size must be an integer, got '64'"):
        train(tiny(out, steps=4), resume=out / "ckpt.pt", explicit={"steps"})


def test_unwritable_out_fails_before_loading_data(tmp_path):
    (tmp_path / "afile").write_text("a file where the --out folder should go")
    with pytest.raises(OutputError, match="cannot write training outputs"):
        train(tiny(tmp_path / "afile" / "run"))


@pytest.mark.slow  # a real training process plus two short runs
def test_sigkill_mid_run_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ddpm.training.cli", "--arch", "basic", "--image-size", "8",
           "--steps", "100000", "--batch-size", "4", "--warmup", "0", "--lr", "1e-3",
           "--sample-every", "0", "--save-every", "2", "--num-train-timesteps", "50",
           "--num-samples", "2", "--sample-steps", "2", "--device", "cpu",
           "--model-config", '{"channels": [8, 8], "kernel_size": 3}', "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "ckpt.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs; only the atomic rename protects ckpt.pt
    proc.wait(timeout=60)
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]  # whole, never torn
    assert step >= 2 and step % 2 == 0

    total = step + 2
    resumed = train(tiny(out, steps=total), resume=out / "ckpt.pt", explicit={"steps"})
    full = train(tiny(tmp_path / "full", steps=total))
    assert resumed.losses == full.losses  # exact, not approximately equal
    a = torch.load(out / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, value in b[key].items():
            assert torch.equal(a[key][name], value), (key, name)


def test_a_folder_where_ckpt_pt_goes_is_refused_before_training(tmp_path):
    (tmp_path / "run" / "ckpt.pt").mkdir(parents=True)
    start = time.perf_counter()
    with pytest.raises(OutputError, match="ckpt.pt' is a folder"):
        train(tiny(tmp_path / "run"))
    assert time.perf_counter() - start < 5


def test_read_only_out_is_one_line_exit_2_before_training(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        result = CliRunner().invoke(train_cli, ["--steps", "2", "--out", str(mnt / "run")])
        assert result.exit_code == 2
        assert "Read-only file system" in one_error_line(result)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 must be < WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "", "MASTER_PORT": ""},
     "cannot join the torchrun process group"),
])
def test_broken_torchrun_environment_is_one_error(tmp_path, monkeypatch, env, match):
    from ddpm.errors import DDPMError

    for k, v in env.items():
        if v:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    with pytest.raises(DDPMError, match=match):
        train(tiny(tmp_path / "run"))
