"""One fused Triton kernel for a whole DDPM / DDIM / DPM-Solver++(2M) / mix sampler step.

Reads the model output and x_t once and writes x_{t-1} (and optionally x̂0) once, doing
in registers what the unfused torch reference does in ~8 full-tensor passes::

    out  = out_u + w * (out_c - out_u)                   # optional classifier-free guidance
    x0   = clip(x0_xt * x_t + x0_out * out)                # DDPM eq. 15 and analogues
    prev = c_x0 * x0 + c_xt * x_t + c_out * out + sigma * z   # DDPM eq. 7 / DDIM eq. 12
    prev += c_prev * prev_x0                               # multistep (DPM-Solver++(2M)) only

The coefficients come from one row of a :class:`ddpm.schedule.StepTable`, so one kernel
serves every prediction type (epsilon, sample, v) and sampler (DDPM, DDIM with any eta,
DPM-Solver++(2M), whose ``prev_x0`` is the x̂0 the previous step wrote, and the seed "mix").
z is loaded from memory or generated in-kernel with ``tl.randn`` keyed exactly like
:func:`ddpm.noise.randn` (seed, step = loop index i, counter = noise_offset + element).

Classifier-free guidance (Ho & Salimans 2022) uses the batched layout: the model ran on
``cat([x_t, x_t])`` with conditions ``cat([cond, null])``, so ``model_output`` has batch
2B -- rows 0..B-1 conditional, rows B..2B-1 unconditional -- while x_t has batch B.
Guidance is applied to the raw output whatever it parameterises (epsilon, sample or v);
the map is linear, so this equals guiding x̂0.

Kernel structure and launch-wrapper checks follow the Triton tutorials (01-vector-add).
The kernel is built on first use for the current ``TRITON_INTERPRET`` setting, so tests
can run it on CPU tensors through the Triton interpreter without leaking the setting.
"""

from __future__ import annotations

import math
import numbers

import torch
import triton
import triton.language as tl

from ddpm.kernels.reference import coefficients
from ddpm.noise import OFFSET_MAX, triton_seed
from ddpm.schedule import StepTable

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Noise source codes (the NOISE constexpr).
NOISE_NONE, NOISE_LOAD, NOISE_PHILOX = 0, 1, 2


def _fused_step(
    out_ptr,  # model output: (B, ...) or (2B, ...) cond-then-uncond when CFG
    xt_ptr,  # x_t, (B, ...) contiguous
    z_ptr,  # noise to load when NOISE == 1 (any pointer otherwise; never read)
    prev_ptr,  # x_{t-1} output; may be xt_ptr for an in-place update
    x0_ptr,  # x̂0 output when WRITE_X0 (any pointer otherwise; never written)
    px0_ptr,  # previous step's x̂0 when PREV (any pointer otherwise; never read)
    n_elements,  # numel of x_t; the unconditional half starts this far into out_ptr
    x0_xt,  # table column x0_xt[i], fp32
    x0_out,  # table column x0_out[i], fp32
    c_x0,  # table column c_x0[i], fp32
    c_xt,  # table column c_xt[i], fp32
    c_out,  # table column c_out[i], fp32
    sigma,  # table column sigma[i], fp32
    c_prev,  # table column c_prev[i], fp32
    clip_range,  # |x̂0| bound when CLIP
    guidance,  # CFG weight w when CFG
    seed,  # Philox seed, (step << 32) | seed32, as ddpm.noise.triton_seed
    noise_offset,  # Philox counter of element 0 (chunked batches)
    CLIP: tl.constexpr,  # clip x̂0 to [-clip_range, clip_range]
    NOISE: tl.constexpr,  # 0 none (sigma == 0), 1 load z_ptr, 2 Philox in-kernel
    CFG: tl.constexpr,  # model output holds cond and uncond halves
    WRITE_X0: tl.constexpr,  # also store x̂0
    PREV: tl.constexpr,  # add c_prev * previous x̂0 (c_prev[i] != 0)
    BLOCK_SIZE: tl.constexpr,  # elements per program
):
    pid = tl.program_id(axis=0)
    # int64 indices: 2^28-element benchmarks and large counters must not wrap.
    offsets = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    xt = tl.load(xt_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    out = tl.load(out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if CFG:
        out_u = tl.load(out_ptr + n_elements + offsets, mask=mask, other=0.0).to(tl.float32)
        out = out_u + guidance * (out - out_u)
    x0 = x0_xt * xt + x0_out * out
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip_range), clip_range)
    prev = c_x0 * x0 + c_xt * xt + c_out * out
    if PREV:
        px0 = tl.load(px0_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        prev = prev + c_prev * px0
    if NOISE == 1:
        z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        prev = prev + sigma * z
    if NOISE == 2:
        z = tl.randn(seed, offsets + noise_offset)
        prev = prev + sigma * z
    tl.store(prev_ptr + offsets, prev.to(prev_ptr.dtype.element_ty), mask=mask)
    if WRITE_X0:
        tl.store(x0_ptr + offsets, x0.to(x0_ptr.dtype.element_ty), mask=mask)


_KERNELS: dict[bool, object] = {}


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: the kernel then runs on CPU tensors via numpy."""
    return bool(triton.knobs.runtime.interpret)


def _kernel():
    # triton.jit returns an interpreted function iff TRITON_INTERPRET is set at decoration.
    mode = interpreting()
    if mode not in _KERNELS:
        _KERNELS[mode] = triton.jit(_fused_step, do_not_specialize=["seed", "noise_offset"])
    return _KERNELS[mode]


def _check_tensor(name: str, t: object, device: torch.device | None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {t.dtype}; the fused step supports float32, float16, bfloat16"
        )
    if not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (strides {t.stride()}); call .contiguous()")
    if interpreting():
        if t.device.type != "cpu":
            raise ValueError(
                f"{name} is on {t.device}, but TRITON_INTERPRET=1 runs the kernel on CPU "
                "tensors; move it to the CPU or unset TRITON_INTERPRET"
            )
    elif t.device.type != "cuda":
        raise ValueError(
            f"{name} is on {t.device}; the Triton kernel needs CUDA tensors "
            "(set TRITON_INTERPRET=1 to run it on CPU through the Triton interpreter)"
        )
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but x_t is on {device}")
    return t


def fused_step(
    table: StepTable,
    i: int,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    noise_offset: int = 0,
    guidance_scale: float | None = None,
    out: torch.Tensor | None = None,
    return_x0: bool = True,
    prev_x0: torch.Tensor | None = None,
    block_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loop step ``i`` of ``table`` in one kernel launch: returns (x_prev, x̂0 or None).

    Noise: pass ``noise`` (a tensor like x_t) to load it, or ``seed`` to draw it in-kernel
    as ``ddpm.noise.randn(x_t.shape, seed=seed, step=i, offset=noise_offset)``; neither is
    needed where ``sigma[i] == 0``. ``guidance_scale`` enables classifier-free guidance
    with ``model_output`` of batch 2B (cond first, then uncond; see the module docstring).
    ``out=x_t`` updates in place. ``prev_x0`` is the x̂0 step ``i - 1`` returned (a
    tensor like x_t), needed where ``c_prev[i] != 0`` (DPM-Solver++(2M); ignored elsewhere).
    Outputs have x_t's dtype; the math is float32.
    """
    r = coefficients(table, i)  # ConfigError (a ValueError) when i is out of range
    x_t = _check_tensor("x_t", x_t, None)
    model_output = _check_tensor("model_output", model_output, x_t.device)
    shape = tuple(x_t.shape)
    cfg = guidance_scale is not None
    if cfg:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise TypeError(f"guidance_scale must be a number, got {guidance_scale!r}")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
        want = (2 * shape[0], *shape[1:]) if shape else None
        if want is None or tuple(model_output.shape) != want:
            raise ValueError(
                f"with guidance_scale, model_output must be (2B, ...) = {want} "
                f"(cond rows then uncond rows) for x_t of shape {shape}; "
                f"got {tuple(model_output.shape)}"
            )
    elif tuple(model_output.shape) != shape:
        raise ValueError(
            f"model_output shape {tuple(model_output.shape)} does not match x_t shape {shape}"
        )
    if noise is not None and seed is not None:
        raise ValueError("pass either noise (loaded) or seed (generated in-kernel), not both")
    mode = NOISE_NONE
    seed64 = 0
    if r["sigma"] != 0.0:
        if noise is not None:
            noise = _check_tensor("noise", noise, x_t.device)
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise shape {tuple(noise.shape)} does not match x_t {shape}")
            mode = NOISE_LOAD
        elif seed is not None:
            seed64 = triton_seed(seed, i)
            mode = NOISE_PHILOX
        else:
            raise ValueError(
                f"step {i} has sigma={r['sigma']:.3g} > 0: pass noise=... or seed=..."
            )
    use_prev = r["c_prev"] != 0.0
    if use_prev:
        if prev_x0 is None:
            raise ValueError(
                f"step {i} of {table.sampler} reads the previous step's x̂0: pass prev_x0=... "
                f"(the x̂0 that step {i - 1} returned)"
            )
        prev_x0 = _check_tensor("prev_x0", prev_x0, x_t.device)
        if tuple(prev_x0.shape) != shape:
            raise ValueError(f"prev_x0 shape {tuple(prev_x0.shape)} does not match x_t {shape}")
    n = x_t.numel()
    if isinstance(noise_offset, bool) or not isinstance(noise_offset, numbers.Integral):
        raise TypeError(f"noise_offset must be an int, got {noise_offset!r}")
    if not 0 <= int(noise_offset) <= OFFSET_MAX - n:
        raise ValueError(f"noise_offset must be in 0..{OFFSET_MAX - n}, got {noise_offset}")
    if out is None:
        out = torch.empty_like(x_t)
    else:
        out = _check_tensor("out", out, x_t.device)
        if tuple(out.shape) != shape or out.dtype != x_t.dtype:
            raise ValueError(
                f"out must match x_t ({shape}, {x_t.dtype}); got {tuple(out.shape)}, {out.dtype}"
            )
    x0 = torch.empty_like(x_t) if return_x0 else None
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    if n == 0:
        return out, x0
    grid = (triton.cdiv(n, block_size),)
    _kernel()[grid](
        model_output, x_t,
        noise if mode == NOISE_LOAD else x_t,
        out,
        x0 if x0 is not None else out,
        prev_x0 if use_prev else x_t,
        n,
        r["x0_xt"], r["x0_out"], r["c_x0"], r["c_xt"], r["c_out"], r["sigma"], r["c_prev"],
        float(table.clip_sample_range),
        float(guidance_scale) if cfg else 0.0,
        seed64,
        int(noise_offset),
        CLIP=bool(table.clip_sample),
        NOISE=mode,
        CFG=cfg,
        WRITE_X0=return_x0,
        PREV=use_prev,
        BLOCK_SIZE=block_size,
        enable_fp_fusion=False,  # no FMA contraction: the same roundings as the CPU paths
    )  # fmt: skip
    return out, x0
