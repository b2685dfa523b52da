"""Coefficient columns of the samplers beyond DDPM/DDIM: DPM-Solver++(2M) and the seed "mix".

Part of the schedule math (numpy only, float64): :func:`ddpm.schedule.step_table` is the only
caller and wraps the columns returned here in a :class:`ddpm.schedule.StepTable`, so every
backend reads them through the same linear form::

    x0   = clip(x0_xt * x_t + x0_out * out)
    prev = c_x0 * x0 + c_xt * x_t + c_out * out + c_prev * prev_x0 + sigma * z

``prev_x0`` is the x̂0 of the previous loop step (the multistep state).

References: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (Alg. 2, multistep second order); conventions (timesteps, first-order
first and last steps, final σ = 0) follow diffusers' ``DPMSolverMultistepScheduler`` with
``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``,
``lower_order_final=True``, ``final_sigmas_type="zero"``, so it serves as the test oracle.
The "mix" sampler is the sampling loop of seeds/001 (x ← x·(1−m) + pred·m, m = 1/(N−i)) for
models trained on its ``corrupt()`` objective.
"""

from __future__ import annotations

import numpy as np

from ddpm.errors import ConfigError

Columns = dict[str, np.ndarray]


def dpm_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str) -> np.ndarray:
    """Timesteps of diffusers' DPM-Solver ``set_timesteps`` (descending int64, N values).

    They differ from DDPM/DDIM's: "linspace" spaces N+1 points over 0..T-1 and drops the last
    (0), "leading" uses a stride of T // (N+1). The step after the last one lands on σ = 0.
    """
    T, N = int(num_train_timesteps), int(num_inference_steps)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, N + 1) * (T // (N + 1))).round()[::-1][:-1]
    else:  # trailing
        ts = np.arange(T, 0, -T / N).round() - 1
    return np.ascontiguousarray(ts).astype(np.int64)


def _check_distinct(T: int, N: int, spacing: str) -> np.ndarray:
    """DPM-Solver divides by the log-SNR gap between visited timesteps: they must differ."""
    ts = dpm_timesteps(T, N, spacing)
    if len(ts) == N and (np.diff(ts) < 0).all() and ts[-1] >= 0:
        return ts
    most = next(n for n in range(N - 1, 0, -1) if _distinct(T, n, spacing))
    raise ConfigError(
        f"dpm++2m with {spacing} spacing visits distinct timesteps only up to {most} steps "
        f"for T={T}, got --steps {N}; pass --steps {most} or fewer",
        field="steps",
    )


def _distinct(T: int, n: int, spacing: str) -> bool:
    ts = dpm_timesteps(T, n, spacing)
    return len(ts) == n and bool((np.diff(ts) < 0).all()) and ts[-1] >= 0


FINAL_SIGMAS = ("zero", "sigma_min")


def dpmpp2m_columns(
    alphas_cumprod: np.ndarray,
    num_inference_steps: int,
    spacing: str,
    *,
    final_sigmas_type: str = "zero",
    lower_order_final: bool = True,
) -> tuple[np.ndarray, Columns]:
    """(timesteps, {c_x0, c_xt, c_prev}) of DPM-Solver++(2M) on the data prediction x̂0.

    With α = sqrt(ᾱ), σ = sqrt(1-ᾱ), λ = log(α/σ), h = λ_next − λ_cur (Lu et al. 2022b)::

        first order  x_next = σ_next/σ_cur · x + α_next(1 − e^{−h}) · x̂0_cur
        second order + D1 = (x̂0_cur − x̂0_prev)/r, r = (λ_cur − λ_prev)/h, weight ½α_next(1−e^{−h})

    Step 0 has no previous x̂0, so it is first order. ``final_sigmas_type`` and
    ``lower_order_final`` are diffusers' options of the same names: the last step lands on
    σ = 0 ("zero", the default: first order, returns x̂0 exactly) or on the smallest training
    σ, ᾱ[0] ("sigma_min"); there it is first order only when ``lower_order_final`` and N < 15.
    """
    if final_sigmas_type not in FINAL_SIGMAS:
        raise ConfigError(
            f"final_sigmas_type must be one of {', '.join(FINAL_SIGMAS)}, got "
            f"{final_sigmas_type!r}", field="final_sigmas_type",
        )
    ac_all = np.asarray(alphas_cumprod, np.float64)
    T, N = len(ac_all), int(num_inference_steps)
    ts = _check_distinct(T, N, spacing)
    ac = ac_all[ts]
    last = 1.0 if final_sigmas_type == "zero" else ac_all[0]  # σ = 0 is ᾱ = 1
    ac_next = np.concatenate([ac_all[ts[1:]], [last]])
    alpha, sigma = np.sqrt(ac), np.sqrt(1.0 - ac)
    alpha_n, sigma_n = np.sqrt(ac_next), np.sqrt(1.0 - ac_next)
    # e^{-h} = (σ_next/α_next) / (σ_cur/α_cur): written as a ratio, so σ_next = 0 gives 0, not nan.
    exp_mh = (sigma_n * alpha) / (alpha_n * sigma)
    a = alpha_n * (1.0 - exp_mh)
    c_x0, c_prev = a.copy(), np.zeros(N)
    final_first = final_sigmas_type == "zero" or (lower_order_final and N < 15)
    i = np.arange(1, N - 1 if final_first else N)  # second-order steps
    if len(i):
        lam = np.log(alpha) - np.log(sigma)
        h = np.log(alpha_n[i]) - np.log(sigma_n[i]) - lam[i]
        r = (lam[i] - lam[i - 1]) / h
        c_x0[i] = a[i] * (1.0 + 0.5 / r)
        c_prev[i] = -0.5 * a[i] / r
    return ts, {"c_x0": c_x0, "c_xt": sigma_n / sigma, "c_prev": c_prev}


def mix_columns(num_train_timesteps: int, num_inference_steps: int) -> tuple[np.ndarray, Columns]:
    """(timesteps, {c_x0, c_xt}) of the seed article's loop: x ← x·(1−m_i) + x̂0·m_i.

    m_i = 1/(N−i), so the corruption amount left at step i is a_i = (N−i)/N when the model's
    prediction is right, and the last step (m = 1) returns x̂0. The model's timestep input is
    a_i on the 0..T-1 grid, the same map ``ddpm-train --objective corrupt`` trains with
    (t = a·(T−1)); the article's BasicUNet ignores it.
    """
    T, N = int(num_train_timesteps), int(num_inference_steps)
    i = np.arange(N, dtype=np.float64)
    m = 1.0 / (N - i)
    ts = np.rint((N - i) / N * (T - 1)).astype(np.int64)
    return ts, {"c_x0": m, "c_xt": 1.0 - m}
