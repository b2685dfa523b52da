"""Counter-based Gaussian noise laid out like Triton's ``tl.randn`` (numpy only).

Philox4x32-10 (Salmon et al. 2011, "Parallel Random Numbers: As Easy as 1, 2, 3") maps a
(key, counter) pair to four 32-bit words with no state, so any backend -- this numpy code,
the fused Triton kernel (``ddpm.kernels``), a CUDA or ONNX graph -- can draw element k of a
tensor independently and get the same value. That is what makes "same seed, same images on
every backend" a testable property.

Layout (identical to ``triton.language.random.randn(seed64, offsets)``)::

    seed64      = (step << 32) | seed            # int64 >= 0: the Triton kernel's seed argument
    key         = (k0, k1) = (seed, step)        # Philox key words = seed64's low / high half
    counter(k)  = offset + k                     # k = C-order index into the flattened tensor
    (c0, c1, c2, c3) = (counter & 0xFFFFFFFF, counter >> 32, 0, 0)
    r0, r1, _, _ = Philox4x32_10(c0..c3, key)
    u_j = float32(int32(r_j) if >= 0 else ~int32(r_j)) * 4.6566127342e-10   # [0, 1)
    z[k] = sqrt(-2 log(max(u_0, 1e-7))) * cos(2 pi u_1)                        # Box-Muller, fp32

``seed`` is the user's 32-bit seed. ``step`` is the sampler loop index i (row i of the
``StepTable``) for the z added at that step, and :data:`INIT_STEP` for the initial x_T
draw. ``offset`` lets a batch drawn in chunks match the whole batch: a chunk starting at
sample b of a tensor with ``n`` elements per sample uses ``offset = b * n``.

Speed: pure numpy costs about 4-5 ms for 196,608 elements (a 64x3x32x32 batch) on the
2-core dev VM -- numpy has no 32x32->64-bit multiply, so each Philox multiply is a
64-bit one. When the optional C extension ``ddpm._philox`` (ddpm/_philox.c, built by
setup.py when a compiler is present) imports, it computes Philox and the exact part of
Box-Muller (int -> float, scale, clamp, * 2 pi) and numpy does log / sqrt / cos as before,
so both paths return bit-identical arrays; :data:`BACKEND` says which one is active
(benchmarks/bench_noise.py times both). The fused Triton kernel draws the same numbers
in-register on the GPU.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from ddpm.errors import ConfigError

try:  # optional compiled core; the numpy code below is the reference and the fallback
    from ddpm import _philox as _c
except ImportError:  # not built (no compiler at install time) or hidden
    _c = None

#: ``"c"`` when ``ddpm._philox`` is in use, ``"numpy"`` for the pure-numpy fallback.
BACKEND = "c" if _c is not None else "numpy"

#: Largest user seed: the seed is Philox key word k0 (32 bits).
SEED_MAX = 2**32 - 1
#: Largest step key: the step is key word k1 and must keep ``seed64`` a positive int64.
STEP_MAX = 2**31 - 1
#: Step key of the initial x_T draw; loop steps use their index 0..N-1, which never reach it.
INIT_STEP = STEP_MAX
#: Element counters are int64 in the kernel, so offset + numel must stay below 2**63.
OFFSET_MAX = 2**63 - 1

_M32 = 0xFFFFFFFF
# Philox4x32 constants (Random123; same values as triton/language/random.py).
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
# uint_to_uniform_float's scale: the largest float32 with (2**31 - 1) * scale < 1.
_U_SCALE = np.float32(4.6566127342e-10)
_TWO_PI = np.float32(6.283185307179586)
_U_MIN = np.float32(1.0e-7)
# Elements per chunk: keeps the six uint64 work arrays (~1.5 MiB) in L2 cache.
_CHUNK = 32768
# C path chunk: the u2 scratch (128 KiB) is reused and each output slice stays in cache.
_C_CHUNK = 32768


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def triton_seed(seed: int, step: int) -> int:
    """The 64-bit seed to pass to ``tl.randn`` so it draws what :func:`randn` draws."""
    seed = _check_int("seed", seed, 0, SEED_MAX)
    step = _check_int("step", step, 0, STEP_MAX)
    return (step << 32) | seed


def _round_keys(k0: int, k1: int) -> list[tuple[int, int]]:
    """Per-round Philox keys (the key is bumped by the Weyl constants after each round)."""
    keys = []
    for _ in range(10):
        keys.append((k0, k1))
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return keys


def philox_r0_r1(
    counter_lo: np.ndarray, counter_hi: int, seed: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Output words r0, r1 of Philox4x32-10 for counters (counter_lo, counter_hi, 0, 0).

    ``counter_lo`` is a uint32 array, ``counter_hi`` one 32-bit value shared by all of
    them. Works in uint64 (products of 32-bit words fit exactly); rounds 1, 2 and 10 are
    specialised because c1, c2, c3 start constant and only r0, r1 are returned.
    """
    U = np.uint64
    A, B, S, MASK = U(_ROUND_A), U(_ROUND_B), U(32), U(_M32)
    keys = _round_keys(seed, step)
    n = counter_lo.size
    r0 = np.empty(n, np.uint32)
    r1 = np.empty(n, np.uint32)
    m = max(1, min(_CHUNK, n))
    c0, c1, c2, c3, pa, pb = (np.empty(m, U) for _ in range(6))
    for s in range(0, n, m):
        e = min(s + m, n)
        C0, C1, C2, C3, PA, PB = (a[: e - s] for a in (c0, c1, c2, c3, pa, pb))
        # Round 1: c2 = c3 = 0, so c0' = c1 ^ k0 is one scalar and c1' = 0.
        k0, k1 = keys[0]
        np.multiply(counter_lo[s:e], A, out=PA)
        np.right_shift(PA, S, out=C2)
        np.bitwise_xor(C2, U(k1), out=C2)
        np.bitwise_and(PA, MASK, out=C3)
        c0_scalar = (counter_hi ^ k0) & _M32
        # Round 2: c0 is a scalar and c1 = 0, so c3' = lo(A * c0) is a scalar too.
        k0, k1 = keys[1]
        np.multiply(C2, B, out=PB)
        np.right_shift(PB, S, out=C0)
        np.bitwise_xor(C0, U(k0), out=C0)
        np.bitwise_and(PB, MASK, out=C1)
        pa_scalar = _ROUND_A * c0_scalar
        np.bitwise_xor(C3, U(((pa_scalar >> 32) ^ k1) & _M32), out=C2)
        c3_scalar = pa_scalar & _M32
        # Rounds 3..9: the general round (round 3 folds the scalar c3 into the key).
        for r in range(2, 9):
            k0, k1 = keys[r]
            np.multiply(C0, A, out=PA)
            np.multiply(C2, B, out=PB)
            np.right_shift(PB, S, out=C0)
            np.bitwise_xor(C0, C1, out=C0)
            np.bitwise_xor(C0, U(k0), out=C0)
            np.right_shift(PA, S, out=C2)
            if r == 2:
                np.bitwise_xor(C2, U(c3_scalar ^ k1), out=C2)
            else:
                np.bitwise_xor(C2, C3, out=C2)
                np.bitwise_xor(C2, U(k1), out=C2)
            np.bitwise_and(PB, MASK, out=C1)
            np.bitwise_and(PA, MASK, out=C3)
        # Round 10: only r0 = hi(B*c2) ^ c1 ^ k0 and r1 = lo(B*c2) are needed.
        k0, _ = keys[9]
        np.multiply(C2, B, out=PB)
        np.right_shift(PB, S, out=C0)
        np.bitwise_xor(C0, C1, out=C0)
        np.bitwise_xor(C0, U(k0), out=C0)
        r0[s:e] = C0
        r1[s:e] = PB  # uint64 -> uint32 keeps the low word
    return r0, r1


def _uniform(r: np.ndarray) -> np.ndarray:
    """Triton's uint_to_uniform_float for uint32: fold the sign, scale into [0, 1)."""
    x = r.view(np.int32)
    # ~x where x < 0, written as x ^ (x >> 31) to stay branch-free and in place.
    np.bitwise_xor(x, np.right_shift(x, 31), out=x)
    u = x.astype(np.float32)
    u *= _U_SCALE
    return u


def _box_muller(r0: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """First output of Triton's pair_uniform_to_normal, in float32 like the kernel."""
    u1 = _uniform(r0)
    u2 = _uniform(r1)
    np.maximum(u1, _U_MIN, out=u1)
    np.log(u1, out=u1)
    u1 *= np.float32(-2.0)
    np.sqrt(u1, out=u1)
    u2 *= _TWO_PI
    np.cos(u2, out=u2)
    u1 *= u2
    return u1


def _randn_c(n: int, seed: int, step: int, offset: int) -> np.ndarray:
    """:func:`randn`'s draw via ``ddpm._philox``: bit-identical to the numpy path.

    The C core fills u1 = max(u(r0), 1e-7) and u2 = u(r1) * 2 pi (integer and correctly
    rounded float32 steps only); the same numpy log / sqrt / cos calls as
    :func:`_box_muller` finish each chunk in place.
    """
    out = np.empty(n, np.float32)
    u2 = np.empty(min(n, _C_CHUNK), np.float32)
    for s in range(0, n, _C_CHUNK):
        m = min(_C_CHUNK, n - s)
        u1, v = out[s : s + m], u2[:m]
        _c.uniform_pair(u1, v, offset + s, m, seed, step)
        np.log(u1, out=u1)
        u1 *= np.float32(-2.0)
        np.sqrt(u1, out=u1)
        np.cos(v, out=v)
        u1 *= v
    return out


def _check_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or int(d) < 0:
            raise ConfigError(f"shape must be non-negative integers, got {shape!r}")
    return tuple(int(d) for d in dims)


def _checked(
    shape: int | Sequence[int], seed: int, step: int, offset: int
) -> tuple[tuple[int, ...], int, int, int, int]:
    """(dims, numel, seed, step, offset) after the checks both draws share."""
    dims = _check_shape(shape)
    seed = _check_int("seed", seed, 0, SEED_MAX)
    step = _check_int("step", step, 0, STEP_MAX)
    offset = _check_int("offset", offset, 0, OFFSET_MAX)
    n = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if offset + n > OFFSET_MAX:
        raise ConfigError(
            f"offset {offset} + {n} elements exceeds the int64 counter range ({OFFSET_MAX})"
        )
    return dims, n, seed, step, offset


def _numpy_draw(n: int, seed: int, step: int, offset: int, finish) -> np.ndarray:
    """float32 (n,): ``finish(r0, r1)`` of the Philox words of counters offset..offset+n-1."""
    out = np.empty(n, np.float32)
    # Split where the counter's high word changes so each piece has one counter_hi.
    start = 0
    while start < n:
        ctr = offset + start
        hi = ctr >> 32
        stop = min(n, ((hi + 1) << 32) - offset)
        lo = np.arange(ctr & _M32, (ctr & _M32) + (stop - start), dtype=np.uint32)
        r0, r1 = philox_r0_r1(lo, hi, seed, step)
        out[start:stop] = finish(r0, r1)
        start = stop
    return out


def randn(
    shape: int | Sequence[int], *, seed: int, step: int, offset: int = 0
) -> np.ndarray:
    """Standard normal float32 array; element k (C order) uses Philox counter ``offset + k``.

    Equals ``tl.randn(triton_seed(seed, step), offset + k)`` (see the module docstring).
    Raises :class:`ddpm.errors.ConfigError` (a ValueError) for a seed outside 0..2**32-1,
    a step outside 0..2**31-1 or counters beyond int64.
    """
    dims, n, seed, step, offset = _checked(shape, seed, step, offset)
    if _c is not None:
        return _randn_c(n, seed, step, offset).reshape(dims)
    return _numpy_draw(n, seed, step, offset, _box_muller).reshape(dims)


def rand(
    shape: int | Sequence[int], *, seed: int, step: int, offset: int = 0
) -> np.ndarray:
    """Uniform [0, 1) float32 array from the same Philox stream as :func:`randn`.

    Element k is ``u(r0)`` of counter ``offset + k`` (the first word, as Box-Muller's u_1 but
    unclamped), which equals ``tl.rand(triton_seed(seed, step), offset + k)``. Same checks
    and errors as :func:`randn`.
    """
    dims, n, seed, step, offset = _checked(shape, seed, step, offset)
    return _numpy_draw(n, seed, step, offset, lambda r0, _r1: _uniform(r0)).reshape(dims)


def initial_noise(
    kind: str,
    shape: int | Sequence[int],
    *,
    seed: int,
    offset: int = 0,
    value_range: Sequence[float] = (-1.0, 1.0),
) -> np.ndarray:
    """The x_T draw a sampler starts from, keyed by (seed, :data:`INIT_STEP`, offset).

    ``kind`` is ``StepTable.init_noise``: "gaussian" is :func:`randn`; "uniform" is
    :func:`rand` mapped onto ``value_range`` (lo + (hi - lo)·u), the noise seeds/001's
    ``corrupt()`` blends with, for the "mix" sampler.
    """
    if kind == "gaussian":
        return randn(shape, seed=seed, step=INIT_STEP, offset=offset)
    if kind == "uniform":
        lo, hi = (np.float32(v) for v in value_range)
        return lo + (hi - lo) * rand(shape, seed=seed, step=INIT_STEP, offset=offset)
    raise ConfigError(f"unknown initial noise {kind!r}; expected gaussian or uniform")
