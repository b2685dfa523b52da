"""Trainer: targets from the schedule, exact resume, DDP under torchrun, bf16, config merging."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.schedule import q_sample_coefficients, training_target
from ddpm.training.config import TrainConfig
from ddpm.training.prepare import prepare
from ddpm.training.trainer import HASH_DIR_ENV, Trainer, train

# A tiny 'ddpm' UNet that still has attention, GroupNorm and dropout (which draws from the
# global torch RNG, so exact resume needs the RNG state restored too).
TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attn_resolutions": [4], "num_groups": 4, "dropout": 0.1}


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # training runs, torchrun with two ranks


def tiny_config(out, **changes) -> TrainConfig:
    base = TrainConfig(
        out=str(out), arch="ddpm", image_size=8, steps=6, batch_size=8, conditional=True,
        warmup=4, lr=1e-3, ema_decay=0.9, num_train_timesteps=100, sample_every=0,
        save_every=0, num_samples=2, sample_steps=2, device="cpu", model_config=dict(TINY),
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_noisy_input_and_target_match_the_numpy_schedule(tmp_path, prediction_type):
    trainer = Trainer(prepare(tiny_config(tmp_path, prediction_type=prediction_type)))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 17, 50, 99])
    x_t, target = trainer.noisy_and_target(x0, eps, t)
    schedule = trainer.schedule
    a, b = (c[t.numpy()].reshape(-1, 1, 1, 1) for c in q_sample_coefficients(schedule))
    expected_xt = a * x0.double().numpy() + b * eps.double().numpy()
    expected = training_target(schedule, x0.double().numpy(), eps.double().numpy(), t.numpy())
    # float32 coefficients vs the float64 reference: a few ulps.
    np.testing.assert_allclose(x_t.numpy(), expected_xt, rtol=0, atol=1e-6)
    np.testing.assert_allclose(target.numpy(), expected, rtol=0, atol=1e-6)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    full = train(tiny_config(tmp_path / "full", steps=6))
    first = train(tiny_config(tmp_path / "split", steps=3))
    assert first.losses == full.losses[:3]
    resumed = train(tiny_config(tmp_path / "ignored", steps=6),
                    resume=tmp_path / "split" / "ckpt.pt", explicit={"steps"})
    assert resumed.out == tmp_path / "split"  # continues in the checkpoint's folder
    assert len(resumed.losses) == 6
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=0, atol=1e-6)
    assert len(set(full.losses)) == 6  # the losses really move (warm-up, new batches)

    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=True)
    assert b["step"] == 6
    for key in ("model", "ema"):
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, rtol=0, atol=1e-6, msg=name)
    assert not (tmp_path / "ignored").exists()


def test_resume_refuses_to_change_what_defines_the_run(tmp_path):
    train(tiny_config(tmp_path, steps=1))
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(ConfigError, match="--lr 0.5 differs from the checkpoint's 0.001"):
        prepare(tiny_config(tmp_path, steps=2, lr=0.5), resume=ckpt, explicit={"lr", "steps"})
    with pytest.raises(ConfigError, match="already at step 1; pass --steps larger"):
        prepare(tiny_config(tmp_path, steps=1), resume=ckpt, explicit={"steps"})


def test_bf16_autocast_and_v_prediction_train_on_cpu(tmp_path):
    result = train(tiny_config(tmp_path, steps=2, bf16=True, prediction_type="v_prediction",
                               conditional=False))
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["schedule"]["prediction_type"] == "v_prediction"
    assert ckpt["train_args"]["bf16"] is True and ckpt["data"]["num_classes"] == 0
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def test_torchrun_two_ranks_end_with_identical_weights(tmp_path):
    # dropout 0 so a single-process run is the exact reference for the DDP one.
    model_config = {**TINY, "dropout": 0.0}
    cfg = tiny_config(tmp_path / "ddp", steps=3, model_config=model_config)
    env = {**os.environ, HASH_DIR_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "ddpm.training.cli", "--dataset", "digits", "--arch", "ddpm", "--conditional",
            "--image-size", "8", "--steps", "3", "--batch-size", "8", "--warmup", "4",
            "--lr", "1e-3", "--ema-decay", "0.9", "--num-train-timesteps", "100",
            "--num-samples", "2", "--sample-steps", "2", "--device", "cpu",
            "--sample-every", "0", "--save-every", "0",
            "--model-config", json.dumps(model_config), "--out", cfg.out]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h0 = (tmp_path / "rank0.sha256").read_text()
    h1 = (tmp_path / "rank1.sha256").read_text()
    assert len(h0.strip()) == 64 and h0 == h1
    ckpt = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["train_args"]["batch_size"] == 8
    assert len(list((tmp_path / "ddp").glob("samples_step*.png"))) == 1  # rank 0 only

    # Each rank took its half of the same global batch and DDP averaged the gradients, so
    # the logged (rank-averaged) losses match one process on the whole batch up to float
    # summation order. Had both ranks used the same half, step 0 would already differ.
    single = train(dataclasses.replace(cfg, out=str(tmp_path / "single")))
    np.testing.assert_allclose(ckpt["losses"], single.losses, rtol=0, atol=1e-5)
