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
