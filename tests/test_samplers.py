"""DPM-Solver++(2M): tables against diffusers' DPMSolverMultistepScheduler, the host loop on
every CPU backend, and the refusals of samplers a model or request cannot use.

Oracle precision: diffusers keeps ᾱ and its σ table in float32 and upcasts the sample to
float32 inside ``step()``. For a 1e-6 check of the algorithm itself (test_schedule.py explains
why float32 tables cannot give one), the oracle gets our float64 ᾱ and σ, and the module's
``torch.float32`` is pointed at float64 so the upcast keeps float64. Both sides then see the
same float32-valued inputs at every step. ``test_stock_float32_diffusers_agrees`` checks the
unmodified float32 scheduler separately, to 1e-3 relative.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import long_chains_slow
from diffusers import DPMSolverMultistepScheduler
from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_module

from ddpm import schedule as S
from ddpm.errors import ConfigError

ATOL = 1e-6


class _Float64Torch:
    """``torch`` with ``float32`` meaning float64 (see the module docstring)."""

    float32 = torch.float64

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _oracle(beta: str, pred: str, spacing: str, clip: bool, n: int, exact: bool, monkeypatch,
            final: str = "zero", lower_order_final: bool = True):  # fmt: skip
    theirs = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule=beta, prediction_type=pred,
        algorithm_type="dpmsolver++", solver_order=2, lower_order_final=lower_order_final,
        timestep_spacing=spacing, thresholding=clip, sample_max_value=1.0,
        final_sigmas_type=final,
    )  # fmt: skip
    theirs.set_timesteps(n)
    if exact:
        ours = "cosine" if beta == "squaredcos_cap_v2" else beta
        ac = np.cumprod(1.0 - S.make_betas(ours, 1000))
        ts = theirs.timesteps.numpy()
        sig = np.sqrt((1.0 - ac[ts]) / ac[ts])
        last = 0.0 if final == "zero" else np.sqrt((1.0 - ac[0]) / ac[0])
        theirs.sigmas = torch.from_numpy(np.concatenate([sig, [last]]))
        monkeypatch.setattr(dpm_module, "torch", _Float64Torch())
    return theirs


def _drive(table: S.StepTable, theirs, exact: bool) -> float:
    """Both samplers over the whole chain on the same inputs per step; max abs error."""
    dt = torch.float64 if exact else torch.float32
    np.testing.assert_array_equal(table.timesteps, theirs.timesteps.numpy())
    rng = np.random.default_rng(0)
    worst, prev_x0 = 0.0, None
    for i, t in enumerate(theirs.timesteps):
        x_t = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
        out = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
        ref = theirs.step(torch.from_numpy(out).to(dt), t, torch.from_numpy(x_t).to(dt))
        ref_x0 = theirs.model_outputs[-1]
        if exact:
            prev, x0 = S.step(table, i, out.astype(np.float64), x_t.astype(np.float64), None,
                              prev_x0=prev_x0)  # fmt: skip
        else:
            prev, x0 = S.step(table, i, out, x_t, None, prev_x0=prev_x0)
        prev_x0 = x0
        for a, b in ((prev, ref.prev_sample.numpy()), (x0, ref_x0.numpy())):
            err = np.abs(a - b) if exact else np.abs(a - b) / np.maximum(1.0, np.abs(b))
            worst = max(worst, float(err.max()))
    return worst


DPM_MATRIX = list(
    itertools.product(
        ["linear", "squaredcos_cap_v2"],
        [1, 2, 3, 10, 50],
        ["linspace", "leading", "trailing"],
        [True, False],
        ["epsilon", "sample", "v_prediction"],
    )
) + [("linear", 999, "linspace", True, "epsilon"), ("linear", 1000, "trailing", False, "v_prediction")]


@pytest.mark.parametrize("beta,n,spacing,clip,pred", long_chains_slow(DPM_MATRIX))
def test_dpmpp2m_step_matches_diffusers(beta, n, spacing, clip, pred, monkeypatch):
    """Per step, x_prev and x̂0 equal diffusers' to 1e-6; our clip_sample is its thresholding
    with sample_max_value = 1 (the quantile is clamped to [1, 1], i.e. plain clipping)."""
    ours_beta = "cosine" if beta == "squaredcos_cap_v2" else beta
    cfg = S.ScheduleConfig(beta_schedule=ours_beta, prediction_type=pred, clip_sample=clip)
    table = S.step_table(cfg, n, sampler="dpm++2m", spacing=spacing)
    assert _drive(table, _oracle(beta, pred, spacing, clip, n, True, monkeypatch), True) <= ATOL


@pytest.mark.parametrize("n", [1, 2, 10, 14, 15, 50])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_dpmpp2m_sigma_min_final_matches_diffusers(n, lower_order_final, pred, monkeypatch):
    """final_sigmas_type="sigma_min": the last step lands on ᾱ[0], second order unless
    lower_order_final and N < 15 (diffusers' rule)."""
    cfg = S.ScheduleConfig(prediction_type=pred, clip_sample=False)
    table = S.step_table(cfg, n, sampler="dpm++2m", spacing="linspace",
                         final_sigmas_type="sigma_min", lower_order_final=lower_order_final)
    theirs = _oracle("linear", pred, "linspace", False, n, True, monkeypatch, "sigma_min",
                     lower_order_final)  # fmt: skip
    assert _drive(table, theirs, True) <= ATOL


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_stock_float32_diffusers_agrees(pred, monkeypatch):
    cfg = S.ScheduleConfig(prediction_type=pred, clip_sample=False)
    table = S.step_table(cfg, 20, sampler="dpm++2m", spacing="linspace")
    theirs = _oracle("linear", pred, "linspace", False, 20, False, monkeypatch)
    assert _drive(table, theirs, False) <= 1e-3


def test_first_order_steps_are_ddim_on_the_same_timesteps():
    """DPM-Solver++ order 1 is DDIM (η = 0, ε̂ from x̂0); with 2 steps both are first order."""
    cfg = S.ScheduleConfig()
    dpm = S.step_table(cfg, 2, sampler="dpm++2m", spacing="linspace")
    ddim = S.step_table(cfg, 2, sampler="ddim", timesteps=dpm.timesteps, clipped_eps=True)
    for col in ("x0_xt", "x0_out", "c_x0", "c_xt"):
        np.testing.assert_allclose(getattr(dpm, col), getattr(ddim, col), rtol=1e-12, atol=1e-15)
    assert not dpm.multistep and not ddim.c_out.any()


def test_table_layout_first_second_and_last_order():
    table = S.step_table(S.ScheduleConfig(), 10, sampler="dpm++2m", spacing="linspace")
    np.testing.assert_array_equal(table.timesteps, np.arange(999, 0, -99.9).round()[:10])
    assert table.c_prev[0] == 0.0 and table.c_prev[-1] == 0.0 and (table.c_prev[1:-1] < 0).all()
    # The last step lands on σ = 0: x_prev is x̂0 exactly.
    assert table.c_x0[-1] == 1.0 and table.c_xt[-1] == 0.0
    assert not table.sigma.any() and not table.c_out.any() and table.init_noise == "gaussian"
    arr = table.as_array()
    assert arr.shape == (10, 7) and S.TABLE_COLUMNS[-1] == "c_prev"
    np.testing.assert_array_equal(arr[:, -1], table.c_prev.astype(np.float32))


def test_step_needs_prev_x0_where_the_table_uses_it():
    table = S.step_table(S.ScheduleConfig(), 5, sampler="dpm++2m")
    x = np.zeros((1, 1, 2, 2))
    S.step(table, 0, x, x, None)  # step 0 is first order
    with pytest.raises(ConfigError, match="previous step's x̂0"):
        S.step(table, 1, x, x, None)
    with pytest.raises(ConfigError, match="previous step's x̂0"):
        S.step(table, 1, x, x, None, prev_x0=x[..., :1])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(sampler="dpm++2m", eta=0.5), "applies only to --sampler ddim"),
        (dict(sampler="dpm++2m", steps=1000, spacing="linspace"), "pass --steps 999 or fewer"),
        (dict(sampler="dpm++2m", steps=0), r"--steps in 1\.\.1000"),
        (dict(sampler="mix"), "pass --sampler ddpm or ddim or dpm\\+\\+2m"),
        (dict(sampler="dpm++2m", spacing="sideways"), "unknown timestep spacing"),
    ],
)
def test_step_table_refusals_are_one_line(kw, match):
    steps = kw.pop("steps", 10)
    with pytest.raises(ConfigError, match=match) as e:
        S.step_table(S.ScheduleConfig(), steps, **kw)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------- host loop on every backend


@pytest.mark.parametrize("kind, steps, guidance", [("uncond", 20, 1.0), ("cond", 10, 3.0)])
def test_dpmpp2m_trajectory_agrees_on_ort_torchscript_torch(damped, kind, steps, guidance):
    """Same seed: the whole DPM-Solver++ trajectory (every x_t and x̂0) within 1e-3."""
    from ddpm.runtime import Sampler

    ref = Sampler.from_path(damped[kind], "torch", num_threads=1)
    g = {"guidance": guidance} if ref.contract.conditional else {}
    want = ref.sample(4, steps=steps, sampler="dpm++2m", seed=3, trajectory=True, **g)
    assert want.xt.shape[0] == steps and want.samples.std() > 0.05
    # The last step lands on σ = 0: the sample is that step's x̂0.
    np.testing.assert_allclose(want.samples, want.x0[-1], atol=1e-6)
    # The loop fed each step the previous x̂0: x_{i+1} = c_x0·x̂0_i + c_xt·x_i + c_prev·x̂0_{i-1}.
    table = S.step_table(ref.contract.schedule_config, steps, sampler="dpm++2m")
    assert table.multistep
    xs = [*want.xt.astype(np.float64), want.samples.astype(np.float64)]
    x0 = want.x0.astype(np.float64)
    for i in range(1, steps):
        lin = table.c_x0[i] * x0[i] + table.c_xt[i] * xs[i] + table.c_prev[i] * x0[i - 1]
        np.testing.assert_allclose(xs[i + 1], lin, atol=1e-5)
    for backend in ("ort", "torchscript"):
        s = Sampler.from_path(damped[kind], backend, num_threads=1)
        got = s.sample(4, steps=steps, sampler="dpm++2m", seed=3, trajectory=True, **g)
        for name in ("samples", "xt", "x0"):
            err = float(np.abs(getattr(got, name) - getattr(want, name)).max())
            assert err <= 1e-3, f"{backend} vs torch, {name}: max abs diff {err:.2e}"


def test_step_graph_runs_a_dpmpp2m_chain_with_prev_x0_as_an_io_pair(damped, tmp_path):
    """model_step.onnx fed the dpm++2m table: a plain ORT loop that feeds each step's x0
    output back as prev_x0 gives the host loop's samples."""
    import onnxruntime as ort

    from ddpm.export import step_graph
    from ddpm.noise import INIT_STEP, randn
    from ddpm.runtime import Sampler

    n, steps, w = 3, 10, 3.0
    model = damped["cond"] / "model.onnx"
    # Its own export-time validation includes a dpm++2m table (per step, vs schedule.step).
    step_graph.write(model, tmp_path / "model_step.onnx", samplers=(("dpm++2m", steps),),
                        say=lambda _m: None)  # fmt: skip
    sess = ort.InferenceSession(str(tmp_path / "model_step.onnx"),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    host = Sampler.from_path(model, num_threads=1)
    k = host.num_classes
    labels = np.arange(n) % k
    want = host.sample(n, steps=steps, sampler="dpm++2m", seed=4, labels=labels, guidance=w)
    table = S.step_table(host.contract.schedule_config, steps, sampler="dpm++2m")
    x = randn((n, *host.image_shape), seed=4, step=INIT_STEP)
    x0 = np.zeros_like(x)  # step 0 has c_prev = 0: any value
    step = np.zeros(1, np.int64)
    for _ in range(steps):
        x, x0, step = sess.run(["x_prev", "x0", "step_next"], {
            "x_t": x, "step": step, "noise": np.zeros((1, *x.shape), np.float32),
            "table": table.as_array(), "timesteps": table.timesteps, "prev_x0": x0,
            "class_labels": np.concatenate([labels, np.full(n, k)]),
            "guidance": np.asarray([w], np.float32),
        })  # fmt: skip
    assert table.multistep and int(step[0]) == steps
    assert float(np.abs(x - want.samples).max()) <= 1e-4
