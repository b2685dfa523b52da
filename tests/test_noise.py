"""ddpm.noise: Philox4x32-10 layout, chunking by offset, N(0, 1) statistics, validation.

Bit-equality with Triton's ``tl.randn`` itself is pinned in tests/test_kernels.py (the
fused kernel's in-kernel noise vs this module, under the Triton interpreter).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from ddpm.errors import ConfigError
from ddpm.noise import INIT_STEP, SEED_MAX, STEP_MAX, philox_r0_r1, randn, triton_seed

N_STAT = 10**6
# 5 standard errors: a deterministic draw, so a pass is a pass forever, yet tight enough
# to catch a wrong scale (e.g. variance 0.99) or a shifted mean.
Z = 5.0


def test_philox_matches_random123_known_answer() -> None:
    # Random123 kat_vectors: philox4x32 10, counter 0, key 0 -> 6627e8d5 e169c58d ...
    r0, r1 = philox_r0_r1(np.zeros(1, np.uint32), 0, 0, 0)
    assert (int(r0[0]), int(r1[0])) == (0x6627E8D5, 0xE169C58D)


def test_same_key_same_noise_and_float32_c_order() -> None:
    a = randn((2, 3, 4), seed=7, step=3)
    b = randn((2, 3, 4), seed=7, step=3)
    assert a.dtype == np.float32 and a.shape == (2, 3, 4) and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a.ravel(), randn(24, seed=7, step=3))


def test_offset_lets_a_batch_be_drawn_in_chunks() -> None:
    whole = randn((8, 3, 5, 5), seed=1, step=4)
    per = 3 * 5 * 5
    parts = [randn((n, 3, 5, 5), seed=1, step=4, offset=b * per) for b, n in ((0, 3), (3, 1), (4, 4))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_counter_high_word_is_used_across_the_2_pow_32_boundary() -> None:
    start = 2**32 - 10
    whole = randn(30, seed=5, step=1, offset=start)
    tail = randn(20, seed=5, step=1, offset=2**32)
    np.testing.assert_array_equal(whole[10:], tail)
    # Counter 2^32 + k must differ from counter k (the high word is part of the key input).
    assert not np.array_equal(tail, randn(20, seed=5, step=1, offset=0))


def test_triton_seed_packs_step_above_seed() -> None:
    assert triton_seed(5, 3) == (3 << 32) | 5
    assert triton_seed(SEED_MAX, STEP_MAX) == 2**63 - 1  # largest positive int64
    assert INIT_STEP == STEP_MAX  # never reached by loop indices 0..N-1


def test_moments_and_kolmogorov_smirnov_against_standard_normal() -> None:
    x = randn(N_STAT, seed=2024, step=INIT_STEP).astype(np.float64)
    n = x.size
    assert abs(x.mean()) < Z / np.sqrt(n)
    assert abs(x.var() - 1.0) < Z * np.sqrt(2.0 / n)
    assert abs(stats.skew(x)) < Z * np.sqrt(6.0 / n)
    assert abs(stats.kurtosis(x)) < Z * np.sqrt(24.0 / n)
    # Box-Muller with u1 >= 1e-7 caps |z| at sqrt(-2 ln 1e-7) = 5.68; P(|z| > 5.68) ~ 1e-8.
    assert np.abs(x).max() <= 5.68
    assert stats.kstest(x, "norm").pvalue > 1e-3


@pytest.mark.parametrize(
    "other",
    [
        {"seed": 2, "step": 0, "offset": 0},  # neighbouring seed
        {"seed": 1, "step": 1, "offset": 0},  # neighbouring step
        {"seed": 1, "step": 0, "offset": 1},  # stream shifted by one element (lag-1)
        {"seed": 1, "step": INIT_STEP, "offset": 0},  # the initial x_T draw
    ],
)
def test_streams_are_uncorrelated(other: dict) -> None:
    n = 200_000
    a = randn(n, seed=1, step=0).astype(np.float64)
    b = randn(n, **other).astype(np.float64)
    assert abs(np.corrcoef(a, b)[0, 1]) < Z / np.sqrt(n)


def test_empty_and_scalar_shapes() -> None:
    assert randn((0, 3), seed=0, step=0).shape == (0, 3)
    s = randn((), seed=0, step=0)
    assert s.shape == () and s == randn(1, seed=0, step=0)[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1, "step": 0}, "seed must be in 0..4294967295"),
        ({"seed": 2**32, "step": 0}, "seed must be in"),
        ({"seed": 1.5, "step": 0}, "seed must be an integer"),
        ({"seed": True, "step": 0}, "seed must be an integer"),
        ({"seed": 0, "step": -1}, "step must be in 0..2147483647"),
        ({"seed": 0, "step": 2**31}, "step must be in"),
        ({"seed": 0, "step": 0, "offset": -3}, "offset must be in"),
        ({"seed": 0, "step": 0, "offset": 2**63 - 2}, "exceeds the int64 counter range"),
    ],
)
def test_bad_keys_raise_a_clear_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        randn(4, **kwargs)
    assert isinstance(info.value, ValueError)


def test_bad_shape_raises() -> None:
    with pytest.raises(ConfigError, match="shape must be non-negative"):
        randn((2, -1), seed=0, step=0)


def test_module_imports_only_numpy() -> None:
    code = ("import sys, ddpm.noise\n"
            "heavy = {'torch', 'triton', 'scipy', 'onnxruntime'} & set(sys.modules)\n"
            "assert not heavy, heavy")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- optional compiled core (ddpm/_philox.c): must agree bit-for-bit with the numpy path ---

# (counter start, n): n not a multiple of 8 exercises the C tail loop; three starts cross
# the counter's 2**32 boundary, one sits just below 2**63.
C_CASES = [(0, 1), (5, 1003), (2**32 - 37, 300), (7 * 2**32 - 5, 77), (2**63 - 2**33, 513)]


def _numpy_words(start: int, n: int, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    r0, r1, k = [], [], start
    while k < start + n:
        m = min(start + n, ((k >> 32) + 1) << 32) - k
        lo = np.arange(k & 0xFFFFFFFF, (k & 0xFFFFFFFF) + m, dtype=np.uint32)
        a, b = philox_r0_r1(lo, k >> 32, seed, step)
        r0.append(a)
        r1.append(b)
        k += m
    return np.concatenate(r0), np.concatenate(r1)


@pytest.fixture(params=["simd", "portable"])
def philox_c(request):
    """ddpm._philox with its AVX2 kernel on (where the CPU has it) or forced off."""
    c = pytest.importorskip("ddpm._philox")
    c.simd(request.param == "simd")
    yield c
    c.simd(True)


def test_backend_reports_whether_the_extension_imports() -> None:
    import importlib.util

    from ddpm import noise

    has_c = importlib.util.find_spec("ddpm._philox") is not None
    assert noise.BACKEND == ("c" if has_c else "numpy")


def test_c_philox_words_match_numpy(philox_c) -> None:
    # The Random123 known answer first, then random keys over the counter cases.
    r0, r1 = np.empty(1, np.uint32), np.empty(1, np.uint32)
    philox_c.philox(r0, r1, 0, 1, 0, 0)
    assert (int(r0[0]), int(r1[0])) == (0x6627E8D5, 0xE169C58D)
    rng = np.random.default_rng(11)
    for start, n in C_CASES:
        seed, step = int(rng.integers(2**32)), int(rng.integers(2**31))
        r0, r1 = np.empty(n, np.uint32), np.empty(n, np.uint32)
        philox_c.philox(r0, r1, start, n, seed, step)
        e0, e1 = _numpy_words(start, n, seed, step)
        np.testing.assert_array_equal(r0, e0)
        np.testing.assert_array_equal(r1, e1)


@pytest.mark.parametrize("shape", [(3, 5, 7), 70_001])  # 70_001 spans several C chunks
def test_c_and_numpy_randn_are_bit_identical(philox_c, monkeypatch, shape) -> None:
    from ddpm import noise

    rng = np.random.default_rng(12)
    keys = [(int(rng.integers(2**32)), int(rng.integers(2**31)), off) for off, _ in C_CASES]
    keys += [(0, INIT_STEP, 0), (SEED_MAX, STEP_MAX, 2**32 - 100)]
    monkeypatch.setattr(noise, "_c", philox_c)
    fast = [noise.randn(shape, seed=s, step=t, offset=o) for s, t, o in keys]
    monkeypatch.setattr(noise, "_c", None)  # the pure-numpy fallback
    for (s, t, o), got in zip(keys, fast, strict=True):
        want = noise.randn(shape, seed=s, step=t, offset=o)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_c_core_validates_buffers_and_keys() -> None:
    c = pytest.importorskip("ddpm._philox")
    r = np.empty(4, np.uint32)
    with pytest.raises(ValueError, match="at least 8"):
        c.philox(r, r, 0, 8, 0, 0)
    with pytest.raises(ValueError, match="k0 must be in"):
        c.philox(r, r, 0, 4, 2**32, 0)
    with pytest.raises(ValueError, match="exceeds 2\\*\\*64"):
        c.philox(r, r, 2**64 - 2, 4, 0, 0)
    with pytest.raises(BufferError):
        c.philox(b"read-only", r, 0, 1, 0, 0)


def test_numpy_fallback_when_the_extension_is_hidden() -> None:
    code = ("import sys; sys.modules['ddpm._philox'] = None  # import fails like an unbuilt one\n"
            "from ddpm import noise\n"
            "assert noise.BACKEND == 'numpy' and noise._c is None\n"
            "sys.stdout.write(noise.randn(50, seed=3, step=9, offset=2**32 - 25).tobytes().hex())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                         capture_output=True, text=True).stdout  # fmt: skip
    got = np.frombuffer(bytes.fromhex(out), np.float32)
    np.testing.assert_array_equal(got, randn(50, seed=3, step=9, offset=2**32 - 25))
