"""diffusers' DDPM/DDIM scheduler options on ddpm/schedule.py, with diffusers as the oracle.

Two kinds of check:
1. diffusers' own scheduler tests (tests/schedulers/test_scheduler_ddpm.py and
   test_scheduler_ddim.py in huggingface/diffusers): their full loops over their dummy model
   and deterministic sample, re-implemented here, must give their expected sums and means
   within their tolerances (1e-2 on the sum, 1e-3 on the mean).
2. every option diffusers' tests sweep (steps_offset, set_alpha_to_one, timestep spacing,
   thresholding with each sample_max_value, rescale_betas_zero_snr, trained_betas,
   clip_sample(_range), variance types, custom timesteps) for each prediction type: a full
   loop of ours against a full loop of diffusers fed the same model, x_T and noise. diffusers
   is run with our float64 β (equal to its own to float32 rounding, checked below), so the
   comparison is of the algorithms: max abs difference of the final samples <= 1e-4.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from ddpm import schedule as S
from ddpm.errors import ConfigError

SHAPE = (4, 3, 8, 8)  # diffusers' dummy sample: batch 4, 3 channels, 8x8


def dummy_sample_deter() -> np.ndarray:
    """diffusers' SchedulerCommonTest.dummy_sample_deter."""
    n = int(np.prod(SHAPE))
    return (np.arange(n).reshape(3, 8, 8, 4) / n).transpose(3, 0, 1, 2).astype(np.float32)


def dummy_noise_deter() -> np.ndarray:
    """diffusers' SchedulerCommonTest.dummy_noise_deter."""
    n = int(np.prod(SHAPE))
    return (np.arange(n)[::-1].reshape(3, 8, 8, 4) / n).transpose(3, 0, 1, 2).astype(np.float32)


def dummy_model(x: np.ndarray, t: int) -> np.ndarray:
    """diffusers' dummy model: sample * t / (t + 1), in float32 as there."""
    t32 = np.float32(t)
    return (x.astype(np.float32) * t32 / (t32 + np.float32(1))).astype(np.float32)


def our_loop(table: S.StepTable, x: np.ndarray, noise=lambda i: None, start: int = 0) -> np.ndarray:
    """The host loop: model, then step(), from row ``start`` to the end of the table."""
    x0 = None
    for i in range(start, len(table)):
        out = dummy_model(x, int(table.timesteps[i]))
        x, x0 = S.step(table, i, out, x, noise(i) if table.sigma[i] != 0 else None, prev_x0=x0)
    return x


def noised_at(cfg: S.ScheduleConfig, table: S.StepTable, row: int) -> np.ndarray:
    """diffusers' add_noise(dummy_sample_deter, dummy_noise_deter, t) at the table's row."""
    a, b = S.q_sample_coefficients(cfg)
    t = int(table.timesteps[row])
    return (a[t] * dummy_sample_deter() + b[t] * dummy_noise_deter()).astype(np.float32)


def sum_mean(x: np.ndarray) -> tuple[float, float]:
    return float(np.abs(x).sum()), float(np.abs(x).mean())


# -- 1. diffusers' expected numbers --------------------------------------------------------
DDPM_BASE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)


def torch_noise(table: S.StepTable):
    """DDPMScheduler.step's draws with torch.manual_seed(0): one per step with t > 0."""
    gen = torch.manual_seed(0)
    draws = {}
    for i, t in enumerate(table.timesteps):
        if t > 0:
            draws[i] = torch.randn(SHAPE, generator=gen).numpy()
    return draws.get


@pytest.mark.parametrize(
    "pred,expected",
    [("epsilon", (258.9606, 0.3372)), ("v_prediction", (202.0296, 0.2631))],
)
def test_ddpm_full_loop_reproduces_diffusers_numbers(pred, expected):
    # test_full_loop_no_noise / test_full_loop_with_v_prediction: all 1000 steps, and
    # (despite the name) DDPM's own σ·z with torch.manual_seed(0) draws.
    cfg = S.ScheduleConfig(prediction_type=pred, **DDPM_BASE)
    table = S.step_table(cfg, 1000, sampler="ddpm")
    s, m = sum_mean(our_loop(table, dummy_sample_deter(), torch_noise(table)))
    assert abs(s - expected[0]) < 1e-2 and abs(m - expected[1]) < 1e-3, (s, m)


def test_ddpm_full_loop_with_noise_reproduces_diffusers_numbers():
    # test_full_loop_with_noise: add_noise at t=1, then steps t=1 and t=0 (rows 998, 999).
    cfg = S.ScheduleConfig(**DDPM_BASE)
    table = S.step_table(cfg, 1000, sampler="ddpm")
    a, b = S.q_sample_coefficients(cfg)
    x = (a[1] * dummy_sample_deter() + b[1] * dummy_noise_deter()).astype(np.float32)
    gen = torch.manual_seed(0)
    draws = {998: torch.randn(SHAPE, generator=gen).numpy()}  # only t=1 > 0 draws
    s, m = sum_mean(our_loop(table, x, draws.get, start=998))
    # diffusers expects 387.9466 / 0.5051; ours is 387.9673 / 0.50517: the sum misses their
    # 1e-2 by 0.021 because of diffusers' float32 arithmetic, not the algorithm. At t=1,
    # 1 - ᾱ_1 ≈ 3e-4 and float32 ᾱ moves the x̂0 coefficient of the posterior mean from
    # 0.5452915 (float64) to 0.5452302. The same diffusers loop with its β upcast to float64
    # (the test below, same draws) gives 387.96725, equal to ours.
    assert abs(s - 387.9466) < 0.025 and abs(m - 0.5051) < 1e-3, (s, m)
    assert abs(s - 387.96725) < 1e-4, s


def test_ddpm_full_loop_with_noise_float64_diffusers_is_ours(monkeypatch):
    theirs = DDPMScheduler(**DDPM_BASE)
    theirs.alphas_cumprod = torch.cumprod(1.0 - theirs.betas.double(), dim=0)
    theirs.one = torch.tensor(1.0, dtype=torch.float64)
    gen = torch.manual_seed(0)
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor",
                        lambda shape, **k: torch.randn(shape, generator=gen).double())
    x = torch.from_numpy(dummy_sample_deter()).double()
    x = theirs.add_noise(x, torch.from_numpy(dummy_noise_deter()).double(), torch.tensor([1]))
    for t in (1, 0):
        x = theirs.step(x * t / (t + 1), t, x).prev_sample
    assert abs(float(x.abs().sum()) - 387.96725) < 1e-4


DDIM_BASE = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, clipped_eps=False)


@pytest.mark.parametrize(
    "options,expected",
    [
        ({}, (172.0067, 0.223967)),
        ({"prediction_type": "v_prediction"}, (52.5302, 0.0684)),
        ({"set_alpha_to_one": True, "beta_start": 0.01}, (149.8295, 0.1951)),
        ({"set_alpha_to_one": False, "beta_start": 0.01}, (149.0784, 0.1941)),
    ],
)
def test_ddim_full_loop_reproduces_diffusers_numbers(options, expected):
    # DDIMSchedulerTest.full_loop: 10 steps, eta 0, scheduler.step's default
    # use_clipped_model_output=False (our clipped_eps=False).
    cfg = S.ScheduleConfig(**{**DDIM_BASE, **options})
    table = S.step_table(cfg, 10, sampler="ddim")
    s, m = sum_mean(our_loop(table, dummy_sample_deter()))
    assert abs(s - expected[0]) < 1e-2 and abs(m - expected[1]) < 1e-3, (s, m)


def test_ddim_full_loop_with_noise_reproduces_diffusers_numbers():
    # add_noise at timesteps[8] = 100, then steps 100 and 0.
    cfg = S.ScheduleConfig(**DDIM_BASE)
    table = S.step_table(cfg, 10, sampler="ddim")
    s, m = sum_mean(our_loop(table, noised_at(cfg, table, 8), start=8))
    assert abs(s - 354.5418) < 1e-2 and abs(m - 0.4616) < 1e-3, (s, m)


def test_steps_offset_timesteps_match_diffusers():
    # DDIMSchedulerTest.test_steps_offset
    cfg = S.ScheduleConfig(steps_offset=1)
    assert S.step_table(cfg, 5, sampler="ddim").timesteps.tolist() == [801, 601, 401, 201, 1]
    assert S.step_table(cfg, 5, sampler="ddpm").timesteps.tolist() == [801, 601, 401, 201, 1]


def test_variances_match_diffusers_numbers():
    # DDIMSchedulerTest.test_variance: _get_variance(t, prev) is σ² of DDIM with η = 1.
    cfg = S.ScheduleConfig()
    for n, t, prev, want in [(50, 420, 400, 0.14771), (50, 980, 960, 0.32460),
                             (1000, 487, 486, 0.00979), (1000, 999, 998, 0.02),
                             (1000, 0, -1, 0.0)]:
        table = S.step_table(cfg, n, sampler="ddim", eta=1.0)
        i = int(np.flatnonzero(table.timesteps == t)[0])
        assert abs(table.sigma[i] ** 2 - want) < 1e-5, (t, prev)
    # DDPMSchedulerTest.test_variance: fixed_small σ² at t = 0, 487, 999 (t = 0 adds none).
    table = S.step_table(cfg, 1000, sampler="ddpm")
    for t, want in [(0, 0.0), (487, 0.00979), (999, 0.02)]:
        assert abs(table.sigma[999 - t] ** 2 - want) < 1e-5, t


def test_custom_timesteps_step_to_the_next_and_are_validated():
    # DDPMSchedulerTest.test_custom_timesteps*: prev of [100, 87, 50, 1, 0] is the next one.
    cfg = S.ScheduleConfig()
    ac = cfg.alphas_cumprod()
    table = S.step_table(cfg, 5, sampler="ddpm", timesteps=[100, 87, 50, 1, 0])
    assert table.timesteps.tolist() == [100, 87, 50, 1, 0]
    # DDPM's c_xt is sqrt(ᾱ_t/ᾱ_prev)·(1-ᾱ_prev)/(1-ᾱ_t): recover ᾱ_prev of row 0 (t=100 -> 87).
    a_t, a_p = ac[100], ac[87]
    assert abs(table.c_xt[0] - np.sqrt(a_t / a_p) * (1 - a_p) / (1 - a_t)) < 1e-12
    for bad in ([100, 87, 50, 51, 0], [1000], [5, -1]):
        with pytest.raises(ConfigError, match="custom timesteps"):
            S.step_table(cfg, len(bad), timesteps=bad)
    with pytest.raises(ConfigError, match="custom timesteps"):
        S.step_table(cfg, 4, timesteps=[100, 87, 50, 1, 0])


# -- 2. every option against diffusers' loop -----------------------------------------------
def _diffusers(cls, cfg: S.ScheduleConfig, **extra):
    """The diffusers scheduler for ``cfg``, its β replaced by our float64 β."""
    kw = dict(
        num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
        beta_end=cfg.beta_end, prediction_type=cfg.prediction_type,
        beta_schedule={"cosine": "squaredcos_cap_v2"}.get(cfg.beta_schedule, cfg.beta_schedule),
        clip_sample=cfg.clip_sample, clip_sample_range=cfg.clip_sample_range,
        thresholding=cfg.thresholding, sample_max_value=cfg.sample_max_value,
        dynamic_thresholding_ratio=cfg.dynamic_thresholding_ratio,
        timestep_spacing=cfg.timestep_spacing, steps_offset=cfg.steps_offset,
        rescale_betas_zero_snr=cfg.rescale_betas_zero_snr,
        trained_betas=list(cfg.trained_betas) if cfg.trained_betas else None,
    )
    if cls is DDIMScheduler:
        kw["set_alpha_to_one"] = cfg.set_alpha_to_one
    else:
        kw["variance_type"] = cfg.variance_type
    theirs = cls(**kw, **extra)
    theirs.betas = torch.from_numpy(cfg.betas())
    theirs.alphas = 1.0 - theirs.betas
    theirs.alphas_cumprod = torch.cumprod(theirs.alphas, dim=0)
    theirs.one = torch.tensor(1.0, dtype=torch.float64)
    if cls is DDIMScheduler:
        first = theirs.alphas_cumprod[0]
        theirs.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) \
            if cfg.set_alpha_to_one else first
    return theirs


def _their_loop(theirs, n, x, noise, monkeypatch, eta=0.0, timesteps=None) -> np.ndarray:
    shared = {}
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: shared["z"])
    if timesteps is not None:
        theirs.set_timesteps(timesteps=timesteps)
    else:
        theirs.set_timesteps(n)
    xt = torch.from_numpy(x.astype(np.float64))
    for i, t in enumerate(theirs.timesteps):
        out = torch.from_numpy(dummy_model(xt.numpy(), int(t)).astype(np.float64))
        shared["z"] = torch.from_numpy(noise(i).astype(np.float64))
        if isinstance(theirs, DDIMScheduler):
            xt = theirs.step(out, t, xt, eta=eta, variance_noise=shared["z"] if eta else None).prev_sample
        else:
            xt = theirs.step(out, t, xt).prev_sample
    return xt.numpy()


def _compare(cfg, sampler, n, monkeypatch, eta=0.0, timesteps=None) -> None:
    rng = np.random.default_rng(7)
    zs = [rng.standard_normal(SHAPE) for _ in range(n)]
    x_T = rng.standard_normal(SHAPE)  # float64: the comparison is of the algorithms
    table = S.step_table(cfg, n, sampler=sampler, eta=eta, timesteps=timesteps)
    ours = x_T
    x0 = None
    for i in range(n):
        out = dummy_model(ours, int(table.timesteps[i])).astype(np.float64)
        ours, x0 = S.step(table, i, out, ours, zs[i] if table.sigma[i] else None, prev_x0=x0)
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    theirs = _diffusers(cls, cfg)
    ref = _their_loop(theirs, n, x_T, lambda i: zs[i], monkeypatch, eta, timesteps)
    np.testing.assert_array_equal(table.timesteps, theirs.timesteps.numpy())
    err = float(np.abs(ours - ref).max())
    assert err <= 1e-4, (cfg, sampler, n, err)
    assert abs(np.abs(ours).sum() - np.abs(ref).sum()) <= 1e-4 * ours.size


PREDS = ["epsilon", "sample", "v_prediction"]
OPTIONS = [
    ({}, 10),
    ({"steps_offset": 1}, 10),
    ({"timestep_spacing": "trailing"}, 10),
    ({"timestep_spacing": "trailing"}, 7),  # T % N != 0
    ({"timestep_spacing": "linspace"}, 10),
    ({"thresholding": True, "sample_max_value": 0.5}, 10),
    ({"thresholding": True, "sample_max_value": 1.0}, 10),
    ({"thresholding": True, "sample_max_value": 2.0, "dynamic_thresholding_ratio": 0.9}, 10),
    ({"clip_sample": False}, 10),
    ({"clip_sample_range": 2.0}, 10),
    ({"beta_schedule": "cosine"}, 10),
    ({"trained_betas": tuple(np.linspace(2e-4, 0.03, 1000))}, 10),
]


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("options,n", OPTIONS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_option_matches_diffusers_loop(options, n, pred, eta, monkeypatch):
    cfg = S.ScheduleConfig(prediction_type=pred, clipped_eps=False,
                           ddim_prev_timestep="t_minus_ratio", **options)
    _compare(cfg, "ddim", n, monkeypatch, eta=eta)


@pytest.mark.parametrize("pred", ["sample", "v_prediction"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_zero_terminal_snr_matches_diffusers_loop(pred, spacing, monkeypatch):
    # Zero terminal SNR: ᾱ_999 = 0, visited first by trailing and linspace spacing.
    cfg = S.ScheduleConfig(prediction_type=pred, rescale_betas_zero_snr=True, clipped_eps=False,
                           ddim_prev_timestep="t_minus_ratio", timestep_spacing=spacing)
    assert cfg.alphas_cumprod()[-1] == 0.0
    _compare(cfg, "ddim", 10, monkeypatch)
    _compare(cfg, "ddpm", 10, monkeypatch)


@pytest.mark.parametrize("pred", PREDS)
@pytest.mark.parametrize("options,n", OPTIONS + [
    ({"variance_type": "fixed_large"}, 10),
    ({"beta_schedule": "sigmoid"}, 10),
    ({"rescale_betas_zero_snr": True}, 10),
])
def test_ddpm_option_matches_diffusers_loop(options, n, pred, monkeypatch):
    _compare(S.ScheduleConfig(prediction_type=pred, **options), "ddpm", n, monkeypatch)


@pytest.mark.parametrize("pred", PREDS)
def test_custom_timesteps_match_diffusers_loop(pred, monkeypatch):
    cfg = S.ScheduleConfig(prediction_type=pred)
    _compare(cfg, "ddpm", 5, monkeypatch, timesteps=[700, 400, 87, 1, 0])


def test_our_default_prev_timestep_differs_from_diffusers_only_where_documented():
    # linspace, N=10: diffusers' DDIM goes 999 -> 899, we go to the next visited, 888.
    ours = S.ScheduleConfig(timestep_spacing="linspace", clipped_eps=False)
    theirs = dataclasses.replace(ours, ddim_prev_timestep="t_minus_ratio")
    ac = ours.alphas_cumprod()
    a = S.step_table(ours, 10, sampler="ddim")
    b = S.step_table(theirs, 10, sampler="ddim")
    assert a.timesteps[:2].tolist() == [999, 888]
    np.testing.assert_allclose([a.c_x0[0] ** 2, b.c_x0[0] ** 2], [ac[888], ac[899]], rtol=1e-12)
    # leading spacing: both conventions are the same chain.
    lead = S.ScheduleConfig(clipped_eps=False)
    for n in (7, 10, 50):
        x = S.step_table(lead, n, sampler="ddim").as_array()
        y = S.step_table(dataclasses.replace(lead, ddim_prev_timestep="t_minus_ratio"), n,
                         sampler="ddim").as_array()
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name,kw", [
    ("sigmoid", {"beta_schedule": "sigmoid"}),
    ("zero snr", {"rescale_betas_zero_snr": True}),
    ("zero snr cosine", {"rescale_betas_zero_snr": True, "beta_schedule": "squaredcos_cap_v2"}),
])
def test_betas_match_diffusers(name, kw):
    theirs = DDPMScheduler(**kw)
    ours = {"squaredcos_cap_v2": "cosine"}.get(kw.get("beta_schedule"), kw.get("beta_schedule"))
    cfg = S.ScheduleConfig(**{**kw, "beta_schedule": ours or "linear"})
    # diffusers rescales in float32, recovering β as ratios of float32 ᾱ: its small β carry
    # ~1e-3 relative rounding, so compare ᾱ (what sampling uses) to float32 precision.
    ref = theirs.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(cfg.alphas_cumprod(), ref, rtol=1e-5, atol=1e-7)
    assert np.abs(cfg.betas() - theirs.betas.double().numpy()).max() < 1e-5  # measured 2e-6


def test_dynamic_threshold_matches_diffusers():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(SHAPE) * 3
    theirs = DDPMScheduler(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.9)
    ref = theirs._threshold_sample(torch.from_numpy(x0)).numpy()
    np.testing.assert_allclose(S.dynamic_threshold(x0, 0.9, 2.0), ref, rtol=0, atol=1e-12)


def test_new_fields_round_trip_and_old_dicts_keep_todays_behaviour():
    cfg = S.ScheduleConfig(
        timestep_spacing="trailing", steps_offset=1, set_alpha_to_one=False, clipped_eps=False,
        ddim_prev_timestep="t_minus_ratio", thresholding=True, sample_max_value=1.5,
        dynamic_thresholding_ratio=0.9, rescale_betas_zero_snr=True,
        trained_betas=tuple(np.linspace(1e-4, 0.02, 1000)), prediction_type="v_prediction",
    )
    import json

    again = S.ScheduleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.betas_sha256() == cfg.betas_sha256()
    old = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
           "beta_end": 0.02, "prediction_type": "epsilon", "variance_type": "fixed_small",
           "clip_sample": True, "clip_sample_range": 1.0}
    loaded = S.ScheduleConfig.from_dict(old)
    for sampler in ("ddpm", "ddim"):
        a = S.step_table(loaded, 20, sampler=sampler)
        b = S.step_table(loaded, 20, sampler=sampler, spacing="leading", clipped_eps=True)
        np.testing.assert_array_equal(a.as_array(), b.as_array())
        assert not a.requires_host_step()
    assert S.step_table(cfg, 10, sampler="ddim").requires_host_step()


@pytest.mark.parametrize("kw,match", [
    ({"timestep_spacing": "middle"}, "timestep_spacing"),
    ({"steps_offset": -1}, "steps_offset"),
    ({"steps_offset": 0.5}, "steps_offset"),
    ({"ddim_prev_timestep": "t-1"}, "ddim_prev_timestep"),
    ({"dynamic_thresholding_ratio": 0.0}, "dynamic_thresholding_ratio"),
    ({"sample_max_value": 0.0}, "sample_max_value"),
    ({"trained_betas": (0.1, 0.2)}, "trained_betas"),
    ({"trained_betas": (0.0,) * 1000}, "trained_betas"),
])
def test_bad_option_values_raise_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        S.ScheduleConfig(**kw)


def test_unreachable_chains_are_refused():
    with pytest.raises(ConfigError, match="steps_offset=1"):
        S.step_table(S.ScheduleConfig(steps_offset=1), 1000)
    # ε-prediction at ᾱ = 0 has no x̂0; diffusers would divide by zero.
    zsnr = S.ScheduleConfig(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    with pytest.raises(ConfigError, match="zero terminal SNR"):
        S.step_table(zsnr, 10, sampler="ddim")


def test_linspace_ddim_sums_follow_the_stored_prev_timestep_convention():
    # diffusers' DDIM full loop (dummy model, 10 steps, eta 0) with timestep_spacing="linspace"
    # sums to 191.2540 (stock float32, measured); the imported convention t - T//N
    # reproduces it, our own next-visited chain gives 169.4641 by design.
    theirs = S.ScheduleConfig(timestep_spacing="linspace", clipped_eps=False,
                              ddim_prev_timestep="t_minus_ratio")
    ours = dataclasses.replace(theirs, ddim_prev_timestep="next_visited")
    s_theirs, _ = sum_mean(our_loop(S.step_table(theirs, 10, sampler="ddim"), dummy_sample_deter()))
    s_ours, _ = sum_mean(our_loop(S.step_table(ours, 10, sampler="ddim"), dummy_sample_deter()))
    sched = DDIMScheduler(timestep_spacing="linspace")
    sched.set_timesteps(10)
    x = torch.from_numpy(dummy_sample_deter())
    for t in sched.timesteps:
        x = sched.step(x * t / (t + 1), t, x, 0.0).prev_sample
    assert abs(s_theirs - float(x.abs().sum())) < 1e-2, (s_theirs, float(x.abs().sum()))
    assert abs(s_ours - 169.4641) < 1e-2, s_ours


# -- 3. DPM-Solver++(2M): diffusers' tests/schedulers/test_scheduler_dpm_multi.py -----------
# Their config: linear betas 1e-4..0.02, dpmsolver++ order 2 midpoint, lower_order_final=False,
# final_sigmas_type="sigma_min", and DPMSolverMultistepScheduler's default "linspace" spacing;
# 10 steps over the dummy model. Their use_karras_sigmas / use_lu_lambdas cases (0.2096,
# 0.1554) have no counterpart: ddpm refuses DPMSolverMultistepScheduler configs on import and
# its dpm++2m steps on the model's own timesteps only.
DPM_TEST = dict(spacing="linspace", final_sigmas_type="sigma_min", lower_order_final=False)


@pytest.mark.parametrize(
    "options,expected_mean",
    [
        ({}, 0.3301),  # test_full_loop_no_noise, test_switch
        ({"thresholding": True, "dynamic_thresholding_ratio": 0.87, "sample_max_value": 0.5},
         1.1364),  # test_full_loop_no_noise_thres
        ({"prediction_type": "v_prediction"}, 0.2251),  # test_full_loop_with_v_prediction
    ],
)  # fmt: skip
def test_dpm_multi_full_loop_reproduces_diffusers_numbers(options, expected_mean):
    table = S.step_table(S.ScheduleConfig(**DDPM_BASE, **options), 10, sampler="dpm++2m",
                         **DPM_TEST)  # fmt: skip
    _, m = sum_mean(our_loop(table, dummy_sample_deter()))
    assert abs(m - expected_mean) < 1e-3, m


def test_dpm_multi_full_loop_with_noise_reproduces_diffusers_numbers():
    # test_full_loop_with_noise: add_noise at the 6th visited timestep, then its last 5 steps.
    # diffusers starts there with no model-output history, so that first step is first order:
    # a second-order row's c_x0 + c_prev is exactly its first-order coefficient (the D1 terms
    # cancel when x̂0_prev = x̂0_cur), which is the row the restart uses.
    cfg = S.ScheduleConfig(**DDPM_BASE)
    table = S.step_table(cfg, 10, sampler="dpm++2m", **DPM_TEST)
    c_x0, c_prev = table.c_x0.copy(), table.c_prev.copy()
    c_x0[5], c_prev[5] = c_x0[5] + c_prev[5], 0.0
    table = dataclasses.replace(table, c_x0=c_x0, c_prev=c_prev)
    s, m = sum_mean(our_loop(table, noised_at(cfg, table, 5), start=5))
    assert abs(s - 318.4111) < 1e-2 and abs(m - 0.4146) < 1e-3, (s, m)


def test_dpm_final_sigma_options_are_validated():
    cfg = S.ScheduleConfig()
    with pytest.raises(ConfigError, match="final_sigmas_type must be one of zero, sigma_min"):
        S.step_table(cfg, 10, sampler="dpm++2m", final_sigmas_type="sigma_max")
    with pytest.raises(ConfigError, match="DPM-Solver\\+\\+ options, not ddim's"):
        S.step_table(cfg, 10, sampler="ddim", lower_order_final=False)
