"""The fused Triton step kernel vs the torch reference vs numpy ``ddpm.schedule.step``.

The Triton checks run in ONE child process started with TRITON_INTERPRET=1 (this file run
as a script): the interpreter must be chosen before triton is first imported, and other
test modules import triton indirectly (diffusers, torch.onnx), so setting it here would
both depend on collection order and leak into them. The child prints a JSON dict of
measured errors per case; each pytest case below asserts on its own entry.

Tolerances (fp32): kernel vs torch reference <= 1e-6 abs (x_prev and x̂0); torch
reference vs numpy (float64) step() <= 1e-5 abs on x_prev; on x̂0, whose unclipped terms
reach ~1e3 at t = T-1 for epsilon (fp32 spacing 6e-5 there), |err| <= 1e-6 * (1 + s) with
s = |x0_xt * x_t| + |x0_out * out| the magnitude of the summed terms.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.schedule import ScheduleConfig, StepTable, step_table

pytestmark = [pytest.mark.slow]  # the Triton kernel in the interpreter

SCHEDULES = ("linear", "cosine")
SAMPLERS = (("ddpm", "fixed_small", 0.0), ("ddpm", "fixed_large", 0.0),
            ("ddim", "fixed_small", 0.0), ("ddim", "fixed_small", 1.0),
            ("dpm++2m", "fixed_small", 0.0))  # fmt: skip
PREDICTIONS = ("epsilon", "sample", "v_prediction")
N_STEPS = 20
STEPS = (0, N_STEPS // 2, N_STEPS - 1)  # first, middle, last (sigma = 0 for DDPM)
# The middle DPM-Solver++ step is second order: it reads prev_x0 (c_prev != 0).


def matrix_cases() -> list[str]:
    return [
        f"{sch}-{smp}-{var}-eta{eta:g}-clip{int(clip)}-{pred}-i{i}"
        for sch in SCHEDULES
        for smp, var, eta in SAMPLERS
        for clip in (True, False)
        for pred in PREDICTIONS
        for i in STEPS
    ]


def parse_case(case: str) -> tuple[StepTable, int, int]:
    """(table, step index, batch size) of a matrix case id."""
    sch, smp, var, eta, clip, pred, i = case.split("-")
    cfg = ScheduleConfig(beta_schedule=sch, variance_type=var, prediction_type=pred,
                         clip_sample=clip == "clip1")  # fmt: skip
    table = step_table(cfg, N_STEPS, sampler=smp, eta=float(eta[3:]))
    index = int(i[1:])
    batch = (1, 2, 3, 5)[(len(case) + index) % 4]  # spread batch sizes over the matrix
    return table, index, batch


# --------------------------------------------------------------------------- child side


def _inputs(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype))


def _max(t) -> float:
    return float(torch.as_tensor(t).double().abs().max()) if torch.as_tensor(t).numel() else 0.0


def _child_matrix(fused_step, ref_step, randn) -> dict:
    from ddpm.schedule import step as np_step

    res = {}
    for case in matrix_cases():
        table, i, b = parse_case(case)
        shape = (b, 3, 7, 5)  # 105 elements per sample: never a multiple of the block
        out, xt = _inputs(shape, len(res))
        px0 = _inputs(shape, 1000 + len(res))[0].clamp(-1, 1)  # a previous (clipped) x̂0
        z = torch.from_numpy(randn(shape, seed=11, step=i))
        p_load, x0_load = fused_step(table, i, out, xt, z, block_size=128, prev_x0=px0)
        p_rng, x0_rng = fused_step(table, i, out, xt, seed=11, block_size=128, prev_x0=px0)
        p_ref, x0_ref = ref_step(table, i, out, xt, z, px0)
        p_np, x0_np = np_step(table, i, out.double().numpy(), xt.double().numpy(),
                              z.double().numpy(), prev_x0=px0.double().numpy())  # fmt: skip
        r = table.row(i)
        s = np.abs(r["x0_xt"] * xt.double().numpy()) + np.abs(r["x0_out"] * out.double().numpy())
        res[case] = {
            "prev_load_vs_ref": _max(p_load - p_ref),
            "x0_load_vs_ref": _max(x0_load - x0_ref),
            "prev_philox_vs_ref": _max(p_rng - p_ref),
            "x0_philox_vs_ref": _max(x0_rng - x0_ref),
            "prev_ref_vs_numpy": float(np.abs(p_ref.double().numpy() - p_np).max()),
            "x0_ref_vs_numpy_scaled": float(
                (np.abs(x0_ref.double().numpy() - x0_np) / (1.0 + s)).max()
            ),
        }
    return res


def _child_features(fused_step, ref_step, randn) -> dict:
    res = {}
    cfg = ScheduleConfig(prediction_type="epsilon", clip_sample=True)
    table = step_table(cfg, N_STEPS, sampler="ddpm")
    i = 3
    # Big batch: B = 64, 3x32x32 with the default block size and in-kernel noise.
    out, xt = _inputs((64, 3, 32, 32), 1)
    z = torch.from_numpy(randn(xt.shape, seed=9, step=i))
    p, x0 = fused_step(table, i, out, xt, seed=9)
    p_ref, x0_ref = ref_step(table, i, out, xt, z)
    res["batch64"] = {"prev": _max(p - p_ref), "x0": _max(x0 - x0_ref)}
    # Chunks of one batch drawn with noise_offset equal the whole batch.
    out, xt = _inputs((6, 3, 5, 5), 2)
    whole, _ = fused_step(table, i, out, xt, seed=4, block_size=64)
    per = xt[0].numel()
    a, _ = fused_step(table, i, out[:2], xt[:2], seed=4, noise_offset=0, block_size=64)
    b, _ = fused_step(table, i, out[2:], xt[2:], seed=4, noise_offset=2 * per, block_size=64)
    res["chunked_noise"] = {"err": _max(torch.cat([a, b]) - whole)}
    # In-kernel noise alone: a table whose only non-zero coefficient is sigma = 1.
    n = 3
    zero, one = np.zeros(n), np.ones(n)
    noise_table = StepTable(sampler="ddpm", prediction_type="epsilon", timesteps=np.arange(n),
                            x0_xt=zero, x0_out=zero, c_x0=zero, c_xt=zero, c_out=zero,
                            sigma=one, clip_sample=False, clip_sample_range=1.0)  # fmt: skip
    for name, seed, step, off in (("noise_seed0", 0, 0, 0), ("noise_big", 2**32 - 1, 2, 2**32 - 100)):
        zeros = torch.zeros(3, 67)
        zk, _ = fused_step(noise_table, step, zeros, zeros, seed=seed, noise_offset=off,
                           block_size=64)  # fmt: skip
        res[name] = {"err": _max(zk - torch.from_numpy(randn((3, 67), seed=seed, step=step,
                                                             offset=off)))}  # fmt: skip
    # Half precision in, fp32 math, output in x_t's dtype; compare in units of the dtype's eps.
    for dt in (torch.float16, torch.bfloat16):
        out, xt = _inputs((2, 3, 9, 9), 3, dt)
        z = torch.from_numpy(randn(xt.shape, seed=1, step=i)).to(dt)
        p, x0 = fused_step(table, i, out, xt, z, block_size=128)
        p_ref, x0_ref = ref_step(table, i, out, xt, z)
        eps = torch.finfo(dt).eps
        res[f"dtype_{dt}"] = {
            "dtype_ok": p.dtype == dt and x0.dtype == dt,
            "prev_ulps": _max((p.float() - p_ref.float()) / (p_ref.float().abs() * eps + 1e-30)),
            "x0_ulps": _max((x0.float() - x0_ref.float()) / (x0_ref.float().abs() * eps + 1e-30)),
        }
    # Mixed: fp16 model output with an fp32 x_t.
    out, xt = _inputs((2, 3, 9, 9), 4)
    p, _ = fused_step(table, i, out.half(), xt, seed=2, block_size=128)
    p_ref, _ = ref_step(table, i, out.half(), xt, torch.from_numpy(randn(xt.shape, seed=2, step=i)))
    res["mixed_fp16_out"] = {"err": _max(p - p_ref)}
    # In place, and without x̂0.
    out, xt = _inputs((3, 3, 6, 6), 5)
    expect, _ = fused_step(table, i, out, xt, seed=3, block_size=64)
    buf = xt.clone()
    got, none_x0 = fused_step(table, i, out, buf, seed=3, out=buf, return_x0=False, block_size=64)
    res["inplace"] = {"err": _max(buf - expect), "same_storage": got.data_ptr() == buf.data_ptr(),
                      "x0_is_none": none_x0 is None}  # fmt: skip
    # Classifier-free guidance: output batch 2B = cond rows then uncond rows.
    ddim = step_table(ScheduleConfig(prediction_type="v_prediction"), N_STEPS, sampler="ddim", eta=0.5)
    out2, _ = _inputs((4, 3, 7, 7), 6)
    _, xt = _inputs((2, 3, 7, 7), 7)
    w = 3.5
    p, x0 = fused_step(ddim, i, out2, xt, seed=8, guidance_scale=w, block_size=64)
    guided = out2[2:] + w * (out2[:2] - out2[2:])
    p_ref, x0_ref = ref_step(ddim, i, guided, xt, torch.from_numpy(randn(xt.shape, seed=8, step=i)))
    res["cfg"] = {"prev": _max(p - p_ref), "x0": _max(x0 - x0_ref)}
    # A whole DPM-Solver++(2M) chain with guidance, each step fed the x̂0 the kernel wrote.
    dpm = step_table(ScheduleConfig(), 8, sampler="dpm++2m")
    xk = xr = _inputs((2, 3, 7, 7), 9)[1]
    pk = pr = None
    worst = 0.0
    for j in range(len(dpm)):
        o2 = _inputs((4, 3, 7, 7), 20 + j)[0]
        xk, pk = fused_step(dpm, j, o2, xk, guidance_scale=w, prev_x0=pk, block_size=64)
        xr, pr = ref_step(dpm, j, o2[2:] + w * (o2[:2] - o2[2:]), xr, None, pr)
        worst = max(worst, _max(xk - xr), _max(pk - pr))
    res["dpm_chain"] = {"err": worst, "multistep": dpm.multistep}
    # The seed "mix" sampler (a corrupt-objective table) on a sample-prediction output.
    mix = step_table(ScheduleConfig(prediction_type="sample", objective="corrupt"), 6,
                     sampler="mix")  # fmt: skip
    out, xt = _inputs((2, 1, 9, 9), 10)
    p, x0 = fused_step(mix, 2, out, xt, block_size=64)
    p_ref, x0_ref = ref_step(mix, 2, out, xt, None)
    res["mix"] = {"prev": _max(p - p_ref), "x0": _max(x0 - x0_ref)}
    # tl.rand equals ddpm.noise.rand element for element (the mix sampler's x_T draw).
    res["rand"] = {"err": _child_rand()}
    return res


def _child_rand() -> float:
    import triton
    import triton.language as tl

    from ddpm.noise import rand, triton_seed

    def fill(out_ptr, n, seed, offset, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.rand(seed, offs + offset), mask=offs < n)

    kernel = triton.jit(fill)
    worst = 0.0
    for seed, step, off in ((0, 0, 0), (2**32 - 1, 5, 2**32 - 70), (7, 2**31 - 1, 3)):
        got = torch.empty(3 * 67)
        kernel[(triton.cdiv(got.numel(), 64),)](got, got.numel(), triton_seed(seed, step), off,
                                                BLOCK=64)  # fmt: skip
        want = torch.from_numpy(rand(got.numel(), seed=seed, step=step, offset=off))
        worst = max(worst, _max(got - want))
    return worst


def _child_bad_inputs(fused_step) -> dict:
    table = step_table(ScheduleConfig(), N_STEPS, sampler="ddpm")
    dpm = step_table(ScheduleConfig(), N_STEPS, sampler="dpm++2m")
    x = torch.zeros(2, 3, 4, 4)
    cases = {
        "step_out_of_range": lambda: fused_step(table, N_STEPS, x, x, seed=0),
        "negative_step": lambda: fused_step(table, -1, x, x, seed=0),
        "non_contiguous": lambda: fused_step(table, 1, x, x.transpose(2, 3), seed=0),
        "shape_mismatch": lambda: fused_step(table, 1, x[:1], x, seed=0),
        "noise_shape": lambda: fused_step(table, 1, x, x, x[:1]),
        "int_dtype": lambda: fused_step(table, 1, x.int(), x, seed=0),
        "float64": lambda: fused_step(table, 1, x, x.double(), seed=0),
        "numpy_input": lambda: fused_step(table, 1, x.numpy(), x, seed=0),
        "no_noise": lambda: fused_step(table, 1, x, x),
        "noise_and_seed": lambda: fused_step(table, 1, x, x, x, seed=0),
        "bad_seed": lambda: fused_step(table, 1, x, x, seed=2**32),
        "bad_offset": lambda: fused_step(table, 1, x, x, seed=0, noise_offset=-1),
        "cfg_batch": lambda: fused_step(table, 1, x, x, seed=0, guidance_scale=2.0),
        "out_dtype": lambda: fused_step(table, 1, x, x, seed=0, out=x.half()),
        "block_size": lambda: fused_step(table, 1, x, x, seed=0, block_size=100),
        "no_prev_x0": lambda: fused_step(dpm, 1, x, x),
        "prev_x0_shape": lambda: fused_step(dpm, 1, x, x, prev_x0=x[:1]),
    }
    res = {}
    for name, fn in cases.items():
        try:
            fn()
            res[name] = ["no error", ""]
        except Exception as e:  # report whatever was raised
            res[name] = [type(e).__name__, str(e)]
    # A CPU tensor when CUDA is expected: switch the interpreter off for this call only.
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        fused_step(table, 1, x, x, seed=0)
        res["cpu_not_cuda"] = ["no error", ""]
    except Exception as e:
        res["cpu_not_cuda"] = [type(e).__name__, str(e)]
    finally:
        os.environ["TRITON_INTERPRET"] = "1"
    return res


def _child_aot() -> None:
    """Compile the real (not interpreted) kernel for sm_90 without a GPU: catches what the
    interpreter accepts but the compiler rejects (types, constexpr branches, tl.randn)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ddpm.kernels import fused as fs

    kernel = fs._kernel()
    scalars = ("x0_xt", "x0_out", "c_x0", "c_xt", "c_out", "sigma", "c_prev", "clip_range",
               "guidance")  # fmt: skip
    res = {}
    for dt, clip, noise, cfg, seed_ty, prev in (("fp32", True, 2, False, "i64", False),
                                                ("fp16", False, 1, True, "i32", True),
                                                ("bf16", True, 0, False, "u32", True)):  # fmt: skip
        const = {"CLIP": clip, "NOISE": noise, "CFG": cfg, "WRITE_X0": True, "PREV": prev,
                 "BLOCK_SIZE": 1024}  # fmt: skip
        sig = {p: "*" + dt for p in ("out_ptr", "xt_ptr", "z_ptr", "prev_ptr", "x0_ptr", "px0_ptr")}
        sig |= {"n_elements": "i32", **dict.fromkeys(scalars, "fp32"), "seed": seed_ty,
                "noise_offset": "i64", **dict.fromkeys(const, "constexpr")}  # fmt: skip
        compiled = triton.compile(ASTSource(kernel, sig, const), target=GPUTarget("cuda", 90, 32))
        res[f"{dt}-noise{noise}-cfg{int(cfg)}"] = "cubin" in compiled.asm and "ptx" in compiled.asm
    print("RESULT-JSON " + json.dumps(res))


def _child_main() -> None:
    if sys.argv[1:] == ["aot"]:
        return _child_aot()
    assert os.environ.get("TRITON_INTERPRET") == "1", "run me with TRITON_INTERPRET=1"
    from ddpm.kernels.fused import fused_step
    from ddpm.kernels.reference import step as ref_step
    from ddpm.noise import randn

    result = {
        "matrix": _child_matrix(fused_step, ref_step, randn),
        "features": _child_features(fused_step, ref_step, randn),
        "bad": _child_bad_inputs(fused_step),
    }
    print("RESULT-JSON " + json.dumps(result))


# -------------------------------------------------------------------------- pytest side

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


def _run_child(*args: str, interpret: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT-JSON ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"kernel child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT-JSON "):])


@pytest.fixture(scope="module")
def kernel_results() -> dict:
    return _run_child(interpret=True)


@needs_triton
def test_kernel_compiles_for_sm90_without_a_gpu() -> None:
    res = _run_child("aot", interpret=False)
    assert len(res) == 3 and all(res.values()), res


@needs_triton
@pytest.mark.parametrize("case", matrix_cases())
def test_fused_step_matches_reference_and_numpy(kernel_results: dict, case: str) -> None:
    m = kernel_results["matrix"][case]
    assert m["prev_load_vs_ref"] <= 1e-6 and m["x0_load_vs_ref"] <= 1e-6, m
    assert m["prev_philox_vs_ref"] <= 1e-6 and m["x0_philox_vs_ref"] <= 1e-6, m
    assert m["prev_ref_vs_numpy"] <= 1e-5, m
    assert m["x0_ref_vs_numpy_scaled"] <= 1e-6, m


@needs_triton
def test_fused_step_big_batch_with_in_kernel_noise(kernel_results: dict) -> None:
    f = kernel_results["features"]["batch64"]
    assert f["prev"] <= 1e-6 and f["x0"] <= 1e-6, f


@needs_triton
@pytest.mark.parametrize("name", ["noise_seed0", "noise_big", "chunked_noise"])
def test_in_kernel_noise_equals_numpy_noise(kernel_results: dict, name: str) -> None:
    assert kernel_results["features"][name]["err"] <= 1e-6


@needs_triton
@pytest.mark.parametrize("dtype", ["torch.float16", "torch.bfloat16"])
def test_half_precision_inputs_round_once(kernel_results: dict, dtype: str) -> None:
    f = kernel_results["features"][f"dtype_{dtype}"]
    # Both paths compute in fp32 and round once, so they may differ by one rounding at most.
    assert f["dtype_ok"] and f["prev_ulps"] <= 1.0 and f["x0_ulps"] <= 1.0, f


@needs_triton
def test_fp16_model_output_with_fp32_state(kernel_results: dict) -> None:
    assert kernel_results["features"]["mixed_fp16_out"]["err"] <= 1e-6


@needs_triton
def test_in_place_update_without_x0(kernel_results: dict) -> None:
    f = kernel_results["features"]["inplace"]
    assert f["err"] == 0.0 and f["same_storage"] and f["x0_is_none"], f


@needs_triton
def test_classifier_free_guidance_batched_layout(kernel_results: dict) -> None:
    f = kernel_results["features"]["cfg"]
    assert f["prev"] <= 1e-6 and f["x0"] <= 1e-6, f


@needs_triton
def test_dpmpp2m_chain_feeds_the_kernels_own_x0_back(kernel_results: dict) -> None:
    f = kernel_results["features"]["dpm_chain"]
    assert f["multistep"] and f["err"] <= 1e-5, f


@needs_triton
def test_mix_step_and_uniform_draw_match(kernel_results: dict) -> None:
    f = kernel_results["features"]
    assert f["mix"]["prev"] <= 1e-6 and f["mix"]["x0"] <= 1e-6, f["mix"]
    assert f["rand"]["err"] == 0.0, f["rand"]


BAD = {
    "step_out_of_range": ("ConfigError", "out of range"),
    "negative_step": ("ConfigError", "out of range"),
    "non_contiguous": ("ValueError", "not contiguous"),
    "shape_mismatch": ("ValueError", "does not match"),
    "noise_shape": ("ValueError", "noise shape"),
    "int_dtype": ("TypeError", "torch.int32"),
    "float64": ("TypeError", "torch.float64"),
    "numpy_input": ("TypeError", "torch.Tensor"),
    "no_noise": ("ValueError", "pass noise=... or seed=..."),
    "noise_and_seed": ("ValueError", "not both"),
    "bad_seed": ("ConfigError", "seed must be in"),
    "bad_offset": ("ValueError", "noise_offset"),
    "cfg_batch": ("ValueError", "(2B, ...)"),
    "out_dtype": ("ValueError", "out must match"),
    "block_size": ("ValueError", "power of two"),
    "cpu_not_cuda": ("ValueError", "needs CUDA tensors"),
    "no_prev_x0": ("ValueError", "pass prev_x0="),
    "prev_x0_shape": ("ValueError", "prev_x0 shape"),
}


@needs_triton
@pytest.mark.parametrize("name", sorted(BAD))
def test_wrapper_rejects_bad_input_clearly(kernel_results: dict, name: str) -> None:
    kind, text = BAD[name]
    got_kind, msg = kernel_results["bad"][name]
    assert got_kind == kind and text in msg, (got_kind, msg)


def test_reference_requires_noise_when_sigma_positive() -> None:
    from ddpm.errors import ConfigError
    from ddpm.kernels.reference import step

    table = step_table(ScheduleConfig(), N_STEPS, sampler="ddpm")
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ConfigError, match="no noise"):
        step(table, 0, x, x, None)
    with pytest.raises(ConfigError, match="does not match"):
        step(table, 0, x[:, :2], x, x)
    prev, x0 = step(table, N_STEPS - 1, x.half(), x.half(), None)  # sigma = 0 at t = 0
    assert prev.dtype == torch.float16 and x0.dtype == torch.float16


def test_reference_refuses_a_dynamic_thresholding_table() -> None:
    from ddpm.errors import ConfigError
    from ddpm.kernels.reference import step

    table = step_table(ScheduleConfig(thresholding=True), N_STEPS, sampler="dpm++2m")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ConfigError, match="dynamic thresholding"):
        step(table, 0, x, x, None)


def test_import_is_lazy() -> None:
    code = ("import sys, ddpm.kernels, ddpm.noise\n"
            "assert not {'torch', 'triton'} & set(sys.modules), sorted(sys.modules)")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


if __name__ == "__main__":
    _child_main()
