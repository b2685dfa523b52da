"""ddpm.runtime.Sampler: outputs, determinism, batching, guidance, threads, backend parity.

Models are tiny random-weight presets from conftest (8x8, 1 channel). For the parity tests
their output layer is scaled by 0.1: a random network is chaotic under the sampler loop
(float32 rounding differences of 1e-6 between ORT and torch grow ~3x per DDIM step, more
with guidance), which says nothing about the runtime. A damped random model keeps the
loop well conditioned, so a plumbing bug (wrong noise, timestep, label or table) still
shows up as an O(1) difference while rounding stays far below the 1e-3 tolerance.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ddpm.errors import ConfigError
from ddpm.noise import INIT_STEP, randn
from ddpm.runtime import Sampler
from ddpm.schedule import step, step_table

PARITY_ATOL = 1e-3  # issue 6: final images in [-1, 1], all CPU backends


@pytest.fixture(scope="module")
def cond_sampler(damped) -> Sampler:
    return Sampler.from_path(damped["cond"] / "model.onnx", num_threads=1)


@pytest.fixture(scope="module")
def uncond_sampler(damped) -> Sampler:
    return Sampler.from_path(damped["uncond"], num_threads=1)  # a folder finds model.onnx


def test_sample_returns_uint8_nhwc_images_and_float_samples(uncond_sampler):
    r = uncond_sampler.sample(3, steps=5, seed=1)
    assert r.images.shape == (3, 8, 8, 1) and r.images.dtype == np.uint8
    assert r.samples.shape == (3, 1, 8, 8) and r.samples.dtype == np.float32
    assert r.xt is None and r.x0 is None and r.labels is None
    np.testing.assert_array_equal(r.timesteps, step_table(uncond_sampler.contract.schedule_config, 5).timesteps)
    assert r.images.std() > 0  # not a constant image


def test_loop_matches_schedule_step_with_counter_noise(uncond_sampler):
    """The runtime loop is exactly: x_T = randn(INIT_STEP), then schedule.step with randn(i)."""
    be = uncond_sampler.engine
    table = step_table(uncond_sampler.contract.schedule_config, 4, sampler="ddpm")
    x = randn((2, 1, 8, 8), seed=7, step=INIT_STEP)
    for i, t in enumerate(table.timesteps):
        out = be.run(x, np.full(2, t, np.int64), None)
        x, _ = step(table, i, out, x, randn((2, 1, 8, 8), seed=7, step=i))
    r = uncond_sampler.sample(2, steps=4, seed=7)
    np.testing.assert_array_equal(r.samples, x)


def test_same_seed_same_images_other_seed_differs(uncond_sampler):
    a = uncond_sampler.sample(2, steps=5, seed=3)
    b = uncond_sampler.sample(2, steps=5, seed=3)
    c = uncond_sampler.sample(2, steps=5, seed=4)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert np.abs(a.samples - c.samples).max() > 0.1


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_batch_size_does_not_change_images(cond_sampler, sampler):
    kw = dict(steps=6, sampler=sampler, eta=0.5 if sampler == "ddim" else 0.0, seed=2, guidance=2.0)
    whole = cond_sampler.sample(5, batch_size=5, **kw)
    for bs in (1, 2, 3):
        np.testing.assert_array_equal(cond_sampler.sample(5, batch_size=bs, **kw).samples, whole.samples)


def test_first_samples_do_not_depend_on_n(uncond_sampler):
    """Noise offsets are global sample indices: sample k is the same in a run of 2 or of 5."""
    np.testing.assert_array_equal(
        uncond_sampler.sample(2, steps=4, seed=9).samples,
        uncond_sampler.sample(5, steps=4, seed=9, batch_size=2).samples[:2],
    )


def test_labels_default_cycle_through_classes(cond_sampler):
    r = cond_sampler.sample(7, steps=2)
    np.testing.assert_array_equal(r.labels, [0, 1, 2, 0, 1, 2, 0])
    one = cond_sampler.sample(3, steps=2, labels=2)
    np.testing.assert_array_equal(one.labels, [2, 2, 2])
    per = cond_sampler.sample(3, steps=2, labels=[1, 0, 1])
    np.testing.assert_array_equal(per.labels, [1, 0, 1])
    assert np.abs(one.samples - per.samples).max() > 0  # the label reaches the model


@pytest.mark.parametrize("w", [0.0, 2.5])
def test_guidance_combines_cond_and_null_outputs(cond_sampler, w):
    """One DDIM step (no noise): x0 must come from out_u + w * (out_c - out_u)."""
    c = cond_sampler.contract
    be = cond_sampler.engine
    table = step_table(c.schedule_config, 1, sampler="ddim")
    x = randn((2, 1, 8, 8), seed=5, step=INIT_STEP)
    t = np.full(2, table.timesteps[0], np.int64)
    y = np.array([1, 2])
    out_c = be.run(x, t, y)
    out_u = be.run(x, t, np.full(2, c.null_label))
    assert np.abs(out_c - out_u).max() > 1e-3  # the label matters, so the test can fail
    want, _ = step(table, 0, out_u + np.float32(w) * (out_c - out_u), x, None)
    got = cond_sampler.sample(2, steps=1, sampler="ddim", seed=5, labels=[1, 2], guidance=w)
    np.testing.assert_allclose(got.samples, want, atol=1e-6)


def test_guidance_one_is_the_plain_conditional_call(cond_sampler):
    calls = []
    be = cond_sampler.engine

    class Spy:  # a minimal engine: the protocol only, no session holding
        contract, name, device, path = be.contract, be.name, be.device, be.path

        def run(self, x, t, y):
            calls.append(x.shape[0])
            return be.run(x, t, y)

        def close(self):
            pass

    Sampler.from_engine(Spy()).sample(3, steps=2, guidance=1.0)
    Sampler.from_engine(Spy()).sample(3, steps=2, guidance=2.0)
    assert calls == [3, 3, 6, 6]  # w=1: B per call; w!=1: cond + uncond batched as 2B


def test_trajectory_records_xt_and_x0_per_step(cond_sampler):
    r = cond_sampler.sample(3, steps=4, seed=1, batch_size=2, trajectory=True)
    assert r.xt.shape == r.x0.shape == (4, 3, 1, 8, 8)
    np.testing.assert_array_equal(r.xt[0], randn((3, 1, 8, 8), seed=1, step=INIT_STEP))
    np.testing.assert_allclose(r.x0[-1], r.samples, atol=1e-6)  # last DDPM step lands on x̂0
    progress = []
    cond_sampler.sample(3, steps=4, batch_size=2, progress=lambda d, t: progress.append((d, t)))
    assert progress == [(k, 8) for k in range(1, 9)]  # 2 batches x 4 steps


def test_eight_threads_match_serial_calls(cond_sampler):
    kws = [dict(seed=s, labels=s % 3, sampler=("ddpm", "ddim")[s % 2], guidance=1.0 + s / 4) for s in range(8)]
    serial = [cond_sampler.sample(4, steps=5, batch_size=2, **kw).samples for kw in kws]
    got: list = [None] * 8
    barrier = threading.Barrier(8)

    def work(k: int) -> None:
        barrier.wait()  # start together so the calls really overlap
        got[k] = cond_sampler.sample(4, steps=5, batch_size=2, **kws[k]).samples

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(8):
        np.testing.assert_array_equal(got[k], serial[k])


def test_cpu_batch_split_across_threads_changes_no_image(damped):
    """2 threads: B >= 2 runs as concurrent single-thread chunks on fixed-batch sessions,
    B == 1 on one 2-thread session; every image equals the 1-thread run bit for bit."""
    one = Sampler.from_path(damped["cond"], num_threads=1)
    two = Sampler.from_path(damped["cond"], num_threads=2)
    for n, kw in [(5, {"guidance": 1.0}), (1, {"guidance": 1.0}), (4, {"guidance": 2.0})]:  # guidance: the model sees 2n
        want = one.sample(n, steps=4, seed=5, batch_size=n, **kw).samples
        np.testing.assert_array_equal(two.sample(n, steps=4, seed=5, batch_size=n, **kw).samples, want)
    # (threads, batch) of the sessions used: 5 -> chunks 2 + 3, 1 -> whole, 2x4 -> 4 + 4
    assert set(two.engine.sessions.keys()) == {(1, 2), (1, 3), (2, 1), (1, 4)}
    assert set(one.engine.sessions.keys()) == {(1, 5), (1, 1), (1, 8)}


def test_spin_only_inside_a_call_and_same_images(damped):
    """--spin: the one-image session's pool spins inside run() and stops after it
    (force_spinning_stop); the default never spins; neither changes an image."""
    base = Sampler.from_path(damped["uncond"], num_threads=1).sample(1, steps=3, seed=4).samples
    for spin in (False, True):
        s = Sampler.from_path(damped["uncond"], num_threads=2, spin=spin)
        np.testing.assert_array_equal(s.sample(1, steps=3, seed=4).samples, base)
        so = s.engine.sessions.acquire((2, 1)).get_session_options()
        s.engine.sessions.release((2, 1))
        assert so.intra_op_num_threads == 2
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
        if spin:
            assert so.get_session_config_entry("session.force_spinning_stop") == "1"


def test_fixed_batch_sessions_are_bounded(damped):
    s = Sampler.from_path(damped["uncond"], num_threads=1, max_sessions=2)
    for n in (1, 2, 3, 2):
        s.sample(n, steps=1, batch_size=n)
    assert s.engine.sessions.keys() == [(1, 3), (1, 2)]  # least recently used (1, 1) dropped
    assert s.engine.sessions.created == 3


@pytest.mark.parametrize(
    "kind, steps, guidance",
    [("uncond", 50, 1.0), ("cond", 50, 1.0), ("cond", 10, 3.0)],
)
def test_ort_torchscript_torch_agree(damped, kind, steps, guidance):
    """Same seed/steps: final images from the three CPU backends within 1e-3, DDPM and DDIM."""
    ref = Sampler.from_path(damped[kind], "torch", num_threads=1)
    others = [
        Sampler.from_path(damped[kind], "ort", num_threads=1),
        Sampler.from_path(damped[kind], "torchscript", num_threads=1),
    ]
    assert ref.contract.schedule_config == others[0].contract.schedule_config
    g = {"guidance": guidance} if ref.contract.conditional else {}
    for sampler in ("ddpm", "ddim"):
        want = ref.sample(4, steps=steps, sampler=sampler, seed=11, **g).samples
        assert np.abs(want).max() <= 1.0 + 1e-6 and want.std() > 0.05
        for s in others:
            got = s.sample(4, steps=steps, sampler=sampler, seed=11, **g).samples
            err = float(np.abs(got - want).max())
            assert err <= PARITY_ATOL, f"{s.backend} vs torch, {sampler}: max abs diff {err:.2e}"


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n=0), "n must be an integer >= 1, got 0"),
        (dict(steps=0), r"steps must be an integer in 1\.\.1000, got 0 \(the model was trained with T=1000\)"),
        (dict(steps=1001), r"steps must be an integer in 1\.\.1000"),
        (dict(sampler="euler"), "ddpm or ddim"),
        (dict(eta=0.5), "only to sampler 'ddim'"),
        (dict(labels=4), r"labels in 0\.\.2"),
        (dict(labels=[0, 1]), "one per sample"),
        (dict(guidance=-1.0), "guidance must be a finite number"),
        (dict(seed=-1), "seed must be an integer"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
    ],
)
def test_bad_requests_raise_config_error_before_any_model_call(cond_sampler, kw, match):
    class Boom:
        contract, name, device, path = cond_sampler.contract, "ort", "cpu", None

        def run(self, *a):
            raise AssertionError("the model was called before validation finished")

        def close(self):
            pass

    args = {"n": 3, **kw}
    with pytest.raises(ConfigError, match=match) as e:
        Sampler.from_engine(Boom()).sample(args.pop("n"), **args)
    assert e.value.field == next(iter(kw))  # the argument at fault, for an API caller
    assert "--" not in str(e.value)  # API messages name arguments, not CLI flags


def test_unconditional_model_refuses_labels_and_guidance(uncond_sampler):
    with pytest.raises(ConfigError, match="pass no labels"):
        uncond_sampler.sample(2, labels=0)
    with pytest.raises(ConfigError, match="pass no guidance"):
        uncond_sampler.sample(2, guidance=3.0)


def test_null_label_gives_unconditional_samples_that_guidance_cannot_change(cond_sampler):
    k = cond_sampler.contract.num_classes
    plain = cond_sampler.sample(3, steps=5, seed=4, labels=k).samples
    guided = cond_sampler.sample(3, steps=5, seed=4, labels=k, guidance=3.0).samples
    # CFG with the null label on both sides is out_u + w*(out_u - out_u) = out_u.
    np.testing.assert_allclose(guided, plain, atol=1e-6)
    labelled = cond_sampler.sample(3, steps=5, seed=4, labels=0).samples
    assert np.abs(labelled - plain).max() > 1e-4
