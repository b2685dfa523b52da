"""The seed "mix" sampler and its ``corrupt`` objective (seeds/001), and the uniform draw it
starts from; plus the one-line refusals of samplers a model or request cannot use, end to end
through ``ddpm-run``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm import schedule as S
from ddpm.errors import ConfigError
from ddpm.noise import INIT_STEP, initial_noise, rand, randn

pytestmark = [pytest.mark.slow]  # training and exporting a corrupt-objective model

CORRUPT = S.ScheduleConfig(prediction_type="sample", objective="corrupt")


def test_rand_is_uniform_keyed_and_chunkable():
    u = rand((4, 1000), seed=3, step=2)
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.005
    np.testing.assert_array_equal(u, rand((4, 1000), seed=3, step=2))
    assert not np.array_equal(u, rand((4, 1000), seed=3, step=1))
    # A batch drawn in chunks with offsets equals the whole draw (as randn).
    parts = [rand((1, 1000), seed=3, step=2, offset=1000 * b) for b in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), u)
    with pytest.raises(ConfigError, match="seed must be in"):
        rand(3, seed=-1, step=0)


def test_initial_noise_by_kind():
    np.testing.assert_array_equal(initial_noise("gaussian", (2, 9), seed=1, offset=18),
                                  randn((2, 9), seed=1, step=INIT_STEP, offset=18))  # fmt: skip
    x = initial_noise("uniform", (64, 64), seed=1, value_range=(-1.0, 1.0))
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() < 1.0 and x.std() > 0.5
    np.testing.assert_allclose(x, 2 * rand((64, 64), seed=1, step=INIT_STEP) - 1, atol=1e-7)
    with pytest.raises(ConfigError, match="unknown initial noise"):
        initial_noise("pink", 3, seed=0)


def test_mix_table_is_the_article_loop():
    """seeds/001: x = x·(1−m) + pred·m with m = 1/(N−i), from uniform noise."""
    n = 7
    table = S.step_table(CORRUPT, n, sampler="mix")
    assert table.init_noise == "uniform" and not table.multistep and not table.sigma.any()
    rng = np.random.default_rng(0)
    target = np.clip(rng.standard_normal((2, 1, 4, 4)), -1, 1)

    def model(x):  # any map; here one that pulls x toward a fixed image
        return np.clip(0.5 * x + 0.5 * target, -1, 1)

    x = ours = initial_noise("uniform", target.shape, seed=0).astype(np.float64)
    for i in range(n):
        m = 1 / (n - i)
        pred = model(x)
        x = x * (1 - m) + pred * m
        ours, _ = S.step(table, i, model(ours), ours, None)
    np.testing.assert_allclose(ours, x, atol=1e-12)
    # The model's timestep input is the corruption amount left, (N-i)/N, on the 0..T-1 grid.
    np.testing.assert_array_equal(table.timesteps, np.rint((n - np.arange(n)) / n * 999))


def test_objective_is_recorded_and_old_configs_load_as_diffusion():
    old = {k: v for k, v in S.ScheduleConfig().to_dict().items() if k != "objective"}
    assert S.ScheduleConfig.from_dict(old).objective == "diffusion"
    assert S.ScheduleConfig.from_dict(CORRUPT.to_dict()) == CORRUPT
    with pytest.raises(ConfigError, match="prediction_type must be 'sample'"):
        S.ScheduleConfig(objective="corrupt")
    with pytest.raises(ConfigError, match="pass --sampler mix"):
        S.step_table(CORRUPT, 10, sampler="ddim")


def test_corrupt_training_target_blends_uniform_noise_over_the_data_range():
    import torch

    from ddpm.training.trainer import Trainer

    me = SimpleNamespace(corrupt=True, noise_lo=-1.0, noise_span=2.0,
                         cfg=SimpleNamespace(num_train_timesteps=1000))  # fmt: skip
    x0 = torch.full((3, 1, 2, 2), 0.5)
    u01 = torch.tensor([0.0, 0.25, 0.999]).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    t = torch.tensor([0, 999, 333])
    x_t, target = Trainer.noisy_and_target(me, x0, u01, t)
    a = torch.tensor([0.0, 1.0, 1 / 3]).view(3, 1, 1, 1)
    torch.testing.assert_close(x_t, x0 * (1 - a) + (2 * u01 - 1) * a)
    assert target is x0


def test_ddpm_train_objective_corrupt_end_to_end(tmp_path, one_torch_thread):
    """Train a few steps, export, and open it: the contract carries the objective, so the
    runtime plans mix and refuses ddpm with the fix."""
    import torch

    from ddpm.export import export_checkpoint
    from ddpm.runtime import Sampler
    from ddpm.training.cli import main

    args = ["--dataset", "digits", "--arch", "basic", "--objective", "corrupt", "--steps", "2",
            "--batch-size", "4", "--image-size", "8", "--sample-every", "0", "--save-every", "0",
            "--num-samples", "2", "--sample-steps", "3", "--out", str(tmp_path),
            "--model-config", '{"channels": [4, 8], "kernel_size": 3}']  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["schedule"]["objective"] == "corrupt"
    assert ckpt["schedule"]["prediction_type"] == "sample"
    assert (tmp_path / "samples_step000002.png").is_file()  # the preview used the mix sampler
    export_checkpoint(tmp_path / "ckpt.pt", formats="onnx", validate=False)
    s = Sampler.from_path(tmp_path / "model.onnx", num_threads=1)
    assert s.contract.schedule_config.objective == "corrupt"
    assert s.plan(2, steps=5, sampler="mix").table.init_noise == "uniform"
    with pytest.raises(ConfigError, match="pass --sampler mix"):
        s.plan(2, steps=5, sampler="ddpm")


def test_ddpm_train_refuses_corrupt_with_another_prediction_type(tmp_path):
    from ddpm.training.cli import main

    r = CliRunner().invoke(main, ["--arch", "basic", "--objective", "corrupt",
                                  "--prediction-type", "epsilon", "--out", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 2
    assert "prediction_type must be 'sample'" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--sampler", "mix"], "pass --sampler ddpm or ddim or dpm++2m"),
        (["--sampler", "dpm++2m", "--eta", "0.5"], "applies only to --sampler ddim"),
        (["--sampler", "dpm++2m", "--steps", "1000"], "pass --steps 999 or fewer"),
    ],
)
def test_ddpm_run_refuses_in_one_line_with_exit_2(flags, match, tmp_path):
    from ddpm.runtime.cli import main

    r = CliRunner().invoke(main, [*flags, "-n", "1", "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2, r.output
    assert match in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "x.png").exists()
