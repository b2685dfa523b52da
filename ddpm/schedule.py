"""Noise schedules, respacing and per-step sampler coefficient tables (numpy only).

The one place the diffusion math lives. Torch, Triton and ONNX paths read the tables built
here and never re-derive them. All math is float64; callers cast a table once.

References: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM, eq. 4, 6, 7, 15);
Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM, eq. 12, 16);
Nichol & Dhariwal 2021, "Improved DDPM" (cosine schedule, eq. 17);
Salimans & Ho 2022, "Progressive Distillation" (v-prediction).
Conventions (timestep spacing, final-step handling, variance clamping) follow diffusers'
``DDPMScheduler`` / ``DDIMScheduler`` so that they can serve as test oracles.

Every sampler step, DDPM or DDIM, is written in one linear form so one kernel serves both::

    x0   = clip(x0_xt * x_t + x0_out * out)                 # predicted x_0
    prev = c_x0 * x0 + c_xt * x_t + c_out * out + sigma * z  # x_{t-1}
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ddpm.errors import ConfigError

BETA_SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
SPACINGS = ("leading", "trailing", "linspace")
#: Where DDIM steps from timestep t: the next timestep the chain visits (ours), or
#: t - T//N (diffusers' DDIMScheduler). They differ only for linspace spacing and for
#: trailing spacing with T not divisible by N.
PREV_TIMESTEPS = ("next_visited", "t_minus_ratio")
SAMPLERS = ("ddpm", "ddim", "dpm++2m", "mix")
#: What a model was trained on: the DDPM objective, or seeds/001's corrupt() (see solvers.py).
OBJECTIVES = ("diffusion", "corrupt")
#: x_T distributions a StepTable can ask for (``StepTable.init_noise``).
INIT_NOISES = ("gaussian", "uniform")
#: The objective each sampler needs; step_table refuses the others.
SAMPLER_OBJECTIVE = {"ddpm": "diffusion", "ddim": "diffusion", "dpm++2m": "diffusion", "mix": "corrupt"}

#: Column order of :meth:`StepTable.as_array`; kernels and ONNX graphs index by position.
TABLE_COLUMNS = ("x0_xt", "x0_out", "c_x0", "c_xt", "c_out", "sigma", "c_prev")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Training noise schedule plus how the model's output is interpreted.

    Stored in checkpoints and in the exported artifact; round-trips through JSON.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    # Sampling conventions, named as in diffusers' DDPM/DDIM schedulers. The defaults are this
    # toolkit's own (and what artifacts without these keys mean); an imported diffusers
    # scheduler config sets them so its model samples as it does in diffusers.
    timestep_spacing: str = "leading"  # the model's default; step_table(spacing=) overrides
    steps_offset: int = 0  # added to "leading" timesteps, as diffusers does
    set_alpha_to_one: bool = True  # DDIM's ᾱ after the last step: 1, else ᾱ_0
    ddim_prev_timestep: str = "next_visited"  # see PREV_TIMESTEPS
    clipped_eps: bool = True  # DDIM direction from the clipped x̂0's ε (use_clipped_model_output)
    thresholding: bool = False  # Imagen dynamic thresholding of x̂0 instead of clipping
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    rescale_betas_zero_snr: bool = False  # Lin et al. 2023, Algorithm 1
    trained_betas: tuple[float, ...] | None = None  # explicit β_1..β_T; beta_schedule unused
    objective: str = "diffusion"  # see OBJECTIVES; "corrupt" models predict x_0 (sample)

    def __post_init__(self) -> None:
        if int(self.num_train_timesteps) < 1:
            raise ConfigError(
                f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}"
            )
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("variance_type", self.variance_type, VARIANCE_TYPES)
        _check_choice("timestep_spacing", self.timestep_spacing, SPACINGS)
        _check_choice("ddim_prev_timestep", self.ddim_prev_timestep, PREV_TIMESTEPS)
        _check_choice("objective", self.objective, OBJECTIVES)
        if self.objective == "corrupt" and self.prediction_type != "sample":
            raise ConfigError(
                f"objective 'corrupt' trains the model to predict the clean image, so its "
                f"prediction_type must be 'sample', got {self.prediction_type!r}"
            )
        if self.clip_sample_range <= 0:
            raise ConfigError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")
        if isinstance(self.steps_offset, bool) or int(self.steps_offset) != self.steps_offset \
                or self.steps_offset < 0:
            raise ConfigError(f"steps_offset must be an integer >= 0, got {self.steps_offset!r}")
        if not 0 < self.dynamic_thresholding_ratio <= 1:
            raise ConfigError(
                f"dynamic_thresholding_ratio must be in (0, 1], got {self.dynamic_thresholding_ratio}"
            )
        if self.sample_max_value <= 0:
            raise ConfigError(f"sample_max_value must be > 0, got {self.sample_max_value}")
        if self.trained_betas is not None:
            tb = tuple(float(b) for b in self.trained_betas)
            object.__setattr__(self, "trained_betas", tb)  # JSON lists become hashable tuples
            if len(tb) != int(self.num_train_timesteps) or not all(0 < b <= 1 for b in tb):
                raise ConfigError(
                    f"trained_betas must be {self.num_train_timesteps} values in (0, 1] (one per "
                    f"training timestep), got {len(tb)} values in [{min(tb, default=0):g}, "
                    f"{max(tb, default=0):g}]; fix the scheduler config"
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"unknown schedule field(s) {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        return cls(**d)

    def betas(self) -> np.ndarray:
        """β_1..β_T as float64, shape (T,): trained_betas or the named schedule, then the
        zero-terminal-SNR rescale if asked for (the order diffusers applies them in)."""
        if self.trained_betas is not None:
            betas = np.asarray(self.trained_betas, dtype=np.float64)
        else:
            betas = make_betas(
                self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end
            )
        return rescale_zero_terminal_snr(betas) if self.rescale_betas_zero_snr else betas

    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t = Π_{s<=t} (1 - β_s), float64, shape (T,)."""
        return np.cumprod(1.0 - self.betas())

    def betas_sha256(self) -> str:
        """Hash of the float64 β table: the artifact contract pins the exact schedule."""
        return hashlib.sha256(np.ascontiguousarray(self.betas(), "<f8").tobytes()).hexdigest()


def make_betas(
    schedule: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """β schedule in float64. ``linear`` (DDPM), ``scaled_linear`` (LDM), ``cosine`` (iDDPM),
    ``sigmoid`` (diffusers' GeoDiff schedule: sigmoid over [-6, 6] scaled to [start, end])."""
    _check_choice("beta_schedule", schedule, BETA_SCHEDULES)
    T = int(num_train_timesteps)
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    if schedule == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T, dtype=np.float64)))
        return s * (beta_end - beta_start) + beta_start
    # Cosine (Nichol & Dhariwal eq. 17), s = 0.008, β clipped at 0.999.
    def alpha_bar(t: np.ndarray) -> np.ndarray:
        return np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    i = np.arange(T, dtype=np.float64)
    betas = 1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T)
    return np.minimum(betas, 0.999)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """β rescaled so ᾱ_T = 0 (zero terminal SNR) with ᾱ_1 kept (Lin et al. 2023, Alg. 1)."""
    sqrt_ac = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    ac = sqrt_ac**2
    return 1.0 - np.concatenate([ac[:1], ac[1:] / ac[:-1]])


def q_sample_coefficients(config: ScheduleConfig) -> tuple[np.ndarray, np.ndarray]:
    """(sqrt(ᾱ_t), sqrt(1-ᾱ_t)) for the forward process x_t = a·x_0 + b·ε (DDPM eq. 4)."""
    ac = config.alphas_cumprod()
    return np.sqrt(ac), np.sqrt(1.0 - ac)


def training_target(
    config: ScheduleConfig, x0: np.ndarray, noise: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """What the network learns to output for ``config.prediction_type`` (numpy reference)."""
    a, b = (c[t].reshape((-1,) + (1,) * (x0.ndim - 1)) for c in q_sample_coefficients(config))
    if config.prediction_type == "epsilon":
        return noise
    if config.prediction_type == "sample":
        return x0
    return a * noise - b * x0  # v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x0


def inference_timesteps(
    num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """The model timesteps visited by an N-step sampler, descending, int64 (N,).

    Same conventions as diffusers' ``set_timesteps``, which adds ``steps_offset`` to
    "leading" timesteps only.
    """
    _check_choice("timestep spacing", spacing, SPACINGS)
    T, N = int(num_train_timesteps), int(num_inference_steps)
    if not 1 <= N <= T:
        raise ConfigError(
            f"number of inference steps must be between 1 and the training T={T}, got {N}; "
            f"pass --steps in 1..{T}"
        )
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, N) * (T // N)).round()[::-1] + int(steps_offset)
    else:  # trailing
        ts = np.round(np.arange(T, 0, -T / N)) - 1
    if ts[0] >= T:
        raise ConfigError(
            f"steps_offset={steps_offset} with {N} leading steps visits timestep {int(ts[0])}, "
            f"beyond the training T={T}; pass fewer --steps"
        )
    return np.ascontiguousarray(ts).astype(np.int64)


@dataclass(frozen=True)
class StepTable:
    """Per-step coefficients of a sampler on a respaced chain; row i is loop step i.

    ``timesteps[i]`` is the model's timestep input at step i. Columns are float64 (N,);
    see the module docstring for the update they define.
    """

    sampler: str
    prediction_type: str
    timesteps: np.ndarray
    x0_xt: np.ndarray
    x0_out: np.ndarray
    c_x0: np.ndarray
    c_xt: np.ndarray
    c_out: np.ndarray
    sigma: np.ndarray
    clip_sample: bool
    clip_sample_range: float
    # Dynamic thresholding replaces clipping when on (see dynamic_threshold).
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    #: Weight of the previous step's x̂0 (multistep samplers; None = zeros for the others).
    c_prev: np.ndarray | None = None
    #: x_T distribution: "gaussian" N(0, I), or "uniform" over the model's value range.
    init_noise: str = "gaussian"

    def __post_init__(self) -> None:
        if self.c_prev is None:
            object.__setattr__(self, "c_prev", np.zeros(len(self.timesteps)))
        _check_choice("init_noise", self.init_noise, INIT_NOISES)

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def multistep(self) -> bool:
        """True when some step reads the previous step's x̂0 (``c_prev`` not all zero)."""
        return bool(np.any(self.c_prev != 0))

    def requires_host_step(self) -> bool:
        """True when :func:`step` does more than the linear table form (a per-sample
        quantile for dynamic thresholding): a backend that runs only the linear update (the
        ONNX step graph, the fused kernel) must refuse such a table."""
        return bool(self.thresholding)

    def as_array(self, dtype=np.float32) -> np.ndarray:
        """Coefficients as one (N, 7) array in :data:`TABLE_COLUMNS` order, cast once."""
        cols = [getattr(self, c) for c in TABLE_COLUMNS]
        return np.ascontiguousarray(np.stack(cols, axis=1).astype(dtype))

    def row(self, i: int) -> dict[str, float]:
        """Coefficients of step ``i`` as Python floats (for kernels' scalar arguments)."""
        check_step_index(i, len(self))
        return {c: float(getattr(self, c)[i]) for c in TABLE_COLUMNS}


def check_step_index(i: int, n: int) -> None:
    if not 0 <= int(i) < n:
        raise ConfigError(f"step index {i} out of range for a {n}-step table (0..{n - 1})")


def _x0_coefficients(prediction_type: str, ac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x̂0 = a·x_t + b·out for each prediction type (DDPM eq. 15 for epsilon)."""
    if prediction_type == "epsilon":
        return 1.0 / np.sqrt(ac), -np.sqrt(1.0 - ac) / np.sqrt(ac)
    if prediction_type == "sample":
        return np.zeros_like(ac), np.ones_like(ac)
    return np.sqrt(ac), -np.sqrt(1.0 - ac)  # v_prediction


def _eps_coefficients(prediction_type: str, ac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ε̂ = a·x_t + b·out from the *unclipped* x̂0, as diffusers' DDIM does."""
    if prediction_type == "epsilon":
        return np.zeros_like(ac), np.ones_like(ac)
    if prediction_type == "sample":
        return 1.0 / np.sqrt(1.0 - ac), -np.sqrt(ac) / np.sqrt(1.0 - ac)
    return np.sqrt(1.0 - ac), np.sqrt(ac)  # v_prediction


def _chain(
    config: ScheduleConfig, n: int, sampler: str, spacing: str | None,
    timesteps: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(visited timesteps, ᾱ of the step each one goes to, ᾱ of all T timesteps)."""
    T = config.num_train_timesteps
    if timesteps is not None:
        ts = np.asarray(timesteps, dtype=np.int64).reshape(-1)
        if len(ts) != int(n) or not (np.diff(ts) < 0).all() or ts[-1] < 0 or ts[0] >= T:
            raise ConfigError(
                f"custom timesteps {ts.tolist()} must be {n} strictly descending values in "
                f"0..{T - 1}; pass a list like [999, 500, 0]"
            )
    else:
        sp = config.timestep_spacing if spacing is None else spacing
        ts = inference_timesteps(T, n, sp, config.steps_offset)
    ac_all = config.alphas_cumprod()
    if sampler == "ddim" and timesteps is None and config.ddim_prev_timestep == "t_minus_ratio":
        prev = ts - T // int(n)  # diffusers' DDIMScheduler
    else:
        prev = np.concatenate([ts[1:], [-1]])
    # Past the last step the chain lands on x_0: ᾱ_prev = 1, except for DDIM with
    # set_alpha_to_one=False, which (as diffusers does) uses ᾱ_0 there.
    final = ac_all[0] if sampler == "ddim" and not config.set_alpha_to_one else 1.0
    ac_prev = np.where(prev >= 0, ac_all[np.maximum(prev, 0)], final)
    return ts, ac_prev, ac_all


def step_table(
    config: ScheduleConfig,
    num_inference_steps: int,
    *,
    sampler: str = "ddpm",
    spacing: str | None = None,
    eta: float = 0.0,
    clipped_eps: bool | None = None,
    timesteps: Sequence[int] | None = None,
    final_sigmas_type: str = "zero",
    lower_order_final: bool = True,
) -> StepTable:
    """Coefficient table for ``sampler`` ("ddpm" ancestral or "ddim" with η) on N steps.

    Every convention comes from ``config`` (so a runtime that passes only the config, N,
    sampler and η samples as the model's source does); keyword arguments override it:
    ``spacing`` the timestep spacing; ``clipped_eps`` (DDIM only) builds the direction term
    from ε̂ re-derived from the clipped x̂0 (True, correct under guidance) or from the raw
    output (False: diffusers' default ``use_clipped_model_output=False``); without clipping
    the two are the same update. ``timesteps`` is an explicit descending list of N model
    timesteps (diffusers' ``set_timesteps(timesteps=...)``), each step going to the next.
    ``final_sigmas_type`` and ``lower_order_final`` (dpm++2m only) are the options of diffusers'
    DPMSolverMultistepScheduler (see :func:`ddpm.solvers.dpmpp2m_columns`).
    """
    _check_choice("sampler", sampler, SAMPLERS)
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    _check_objective(config, sampler)
    if sampler != "dpm++2m" and (final_sigmas_type != "zero" or not lower_order_final):
        raise ConfigError(
            f"final_sigmas_type and lower_order_final are DPM-Solver++ options, not {sampler}'s; "
            "leave them at their defaults or use sampler dpm++2m"
        )
    if sampler in ("dpm++2m", "mix"):
        return _solver_table(
            config, num_inference_steps, sampler, spacing, eta, timesteps,
            final_sigmas_type=final_sigmas_type, lower_order_final=bool(lower_order_final),
        )  # fmt: skip
    clipped_eps = config.clipped_eps if clipped_eps is None else bool(clipped_eps)
    ts, ac_prev, ac_all = _chain(config, num_inference_steps, sampler, spacing, timesteps)
    ac = ac_all[ts]
    if config.prediction_type == "epsilon" and (ac == 0).any():
        raise ConfigError(
            f"timestep {int(ts[ac == 0][0])} has ᾱ = 0 (zero terminal SNR), where an epsilon "
            "model's x̂0 is undefined; use leading spacing, or a v_prediction/sample model"
        )
    x0_xt, x0_out = _x0_coefficients(config.prediction_type, ac)
    zeros = np.zeros_like(ac)

    if sampler == "ddpm":
        # DDPM eq. 7 on the respaced chain: β̃ and the posterior mean coefficients.
        alpha_t = ac / ac_prev
        beta_t = 1.0 - alpha_t
        c_x0 = np.sqrt(ac_prev) * beta_t / (1.0 - ac)
        c_xt = np.sqrt(alpha_t) * (1.0 - ac_prev) / (1.0 - ac)
        if config.variance_type == "fixed_small":
            var = np.maximum((1.0 - ac_prev) / (1.0 - ac) * beta_t, 1e-20)
        else:  # fixed_large: σ² = β_t
            var = beta_t
        # diffusers adds no noise when the model timestep is 0.
        sigma = np.where(ts > 0, np.sqrt(var), 0.0)
        c_out = zeros
    else:
        # DDIM eq. 12 with σ_t(η) from eq. 16.
        var = (1.0 - ac_prev) / (1.0 - ac) * (1.0 - ac / ac_prev)
        sigma = eta * np.sqrt(var)
        direction = np.sqrt(np.maximum(1.0 - ac_prev - sigma**2, 0.0))
        if clipped_eps:
            # ε̂ re-derived from the *clipped* x̂0, ε̂ = (x_t - sqrt(ᾱ)·x̂0) / sqrt(1-ᾱ) (GLIDE;
            # diffusers' use_clipped_model_output=True). With guidance the raw network output
            # and the clipped x̂0 disagree; a direction term built from the raw output then
            # pushes x_t out of the data range (noise-like samples at w=3).
            c_x0 = np.sqrt(ac_prev) - direction * np.sqrt(ac) / np.sqrt(1.0 - ac)
            c_xt = direction / np.sqrt(1.0 - ac)
            c_out = zeros
        else:
            # ε̂ from the raw network output, as diffusers' DDIMScheduler does by default.
            eps_xt, eps_out = _eps_coefficients(config.prediction_type, ac)
            c_x0 = np.sqrt(ac_prev)
            c_xt = direction * eps_xt
            c_out = direction * eps_out

    return StepTable(
        sampler=sampler,
        prediction_type=config.prediction_type,
        timesteps=ts,
        x0_xt=x0_xt,
        x0_out=x0_out,
        c_x0=c_x0,
        c_xt=c_xt,
        c_out=c_out,
        sigma=sigma,
        clip_sample=bool(config.clip_sample),
        clip_sample_range=float(config.clip_sample_range),
        thresholding=bool(config.thresholding),
        dynamic_thresholding_ratio=float(config.dynamic_thresholding_ratio),
        sample_max_value=float(config.sample_max_value),
    )


def dynamic_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3), per sample: s = the
    ``ratio`` quantile of |x̂0| over C·H·W, clamped to [1, max_value]; x̂0 → clip(x̂0, ±s) / s.
    Linear interpolation between order statistics, as torch.quantile (diffusers) uses."""
    flat = x0.reshape(x0.shape[0] if x0.ndim > 1 else 1, -1)
    s = np.quantile(np.abs(flat), ratio, axis=1, keepdims=True)
    s = np.minimum(np.maximum(s, 1.0), max_value)  # torch.clamp(min=1, max=v) order
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


def _check_objective(config: ScheduleConfig, sampler: str) -> None:
    """Refuse a sampler the model's training objective does not support (one line, the fix)."""
    need = SAMPLER_OBJECTIVE[sampler]
    if config.objective != need:
        fits = [s for s, o in SAMPLER_OBJECTIVE.items() if o == config.objective]
        raise ConfigError(
            f"sampler {sampler!r} needs a model trained with objective {need!r}, but this one "
            f"was trained with {config.objective!r}; pass --sampler {' or '.join(fits)}",
            field="sampler",
        )


def _solver_table(
    config: ScheduleConfig, n: int, sampler: str, spacing: str | None, eta: float,
    timesteps: Sequence[int] | None, **dpm_options,
) -> StepTable:
    """Table of "dpm++2m" or "mix" from :mod:`ddpm.solvers` (deterministic: no η, σ = 0)."""
    from ddpm import solvers

    T = config.num_train_timesteps
    if eta != 0:
        raise ConfigError(
            f"eta={eta} applies only to --sampler ddim; {sampler} is deterministic, drop --eta",
            field="eta",
        )
    if timesteps is not None:
        raise ConfigError(f"explicit timesteps apply only to ddpm and ddim, not {sampler}")
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= T:
        raise ConfigError(
            f"number of inference steps must be between 1 and the training T={T}, got {n}; "
            f"pass --steps in 1..{T}", field="steps",
        )
    if sampler == "mix":
        ts, cols = solvers.mix_columns(T, n)
    else:
        spacing = config.timestep_spacing if spacing is None else spacing
        _check_choice("timestep spacing", spacing, SPACINGS)
        ts, cols = solvers.dpmpp2m_columns(config.alphas_cumprod(), n, spacing, **dpm_options)
    x0_xt, x0_out = _x0_coefficients(config.prediction_type, config.alphas_cumprod()[ts])
    zeros = np.zeros(len(ts))
    return StepTable(
        sampler=sampler, prediction_type=config.prediction_type, timesteps=ts,
        x0_xt=x0_xt, x0_out=x0_out, c_x0=cols["c_x0"], c_xt=cols["c_xt"], c_out=zeros,
        sigma=zeros, clip_sample=bool(config.clip_sample),
        clip_sample_range=float(config.clip_sample_range), thresholding=bool(config.thresholding),
        dynamic_thresholding_ratio=float(config.dynamic_thresholding_ratio),
        sample_max_value=float(config.sample_max_value), c_prev=cols.get("c_prev", zeros),
        init_noise="uniform" if sampler == "mix" else "gaussian",
    )



def guide(out_c, out_u, guidance: float):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): out_u + w·(out_c − out_u).

    The one definition of the formula: the host loop calls it, the step graph draws the same
    order of operations in ONNX nodes and the Triton kernel in registers, so all round alike.
    Works on numpy arrays (a float32 result stays float32) and on torch tensors.
    """
    w = np.float32(guidance) if isinstance(out_u, np.ndarray) else float(guidance)
    return out_u + w * (out_c - out_u)


def step(
    table: StepTable,
    i: int,
    model_output: np.ndarray,
    x_t: np.ndarray,
    noise: np.ndarray | None,
    prev_x0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference update for loop step ``i``: returns (x_prev, x̂0) in ``x_t``'s dtype.

    ``noise`` is z ~ N(0, I) of x_t's shape, passed explicitly so every backend can be fed
    the same draw; it may be None only where ``sigma[i] == 0``. ``prev_x0`` is the x̂0
    returned by step ``i - 1`` (None at step 0): loops always pass it, so multistep samplers
    can use it; single-step samplers (DDPM, DDIM) ignore it.
    """
    check_step_index(i, len(table))
    if model_output.shape != x_t.shape:
        raise ConfigError(
            f"model output shape {model_output.shape} does not match x_t shape {x_t.shape}"
        )
    r = table.row(i)
    xt = x_t.astype(np.float64)
    out = model_output.astype(np.float64)
    # 1. predicted x_0 (DDPM eq. 15 / its sample and v analogues)
    x0 = r["x0_xt"] * xt + r["x0_out"] * out
    # 2. optional dynamic thresholding (takes precedence, as in diffusers) or clipping of x̂0
    if table.thresholding:
        x0 = dynamic_threshold(x0, table.dynamic_thresholding_ratio, table.sample_max_value)
    elif table.clip_sample:
        x0 = np.clip(x0, -table.clip_sample_range, table.clip_sample_range)
    # 3. posterior mean (DDPM eq. 7) or DDIM direction (DDIM eq. 12)
    prev = r["c_x0"] * x0 + r["c_xt"] * xt + r["c_out"] * out
    # 3b. multistep term: the previous step's x̂0 (DPM-Solver++(2M); zero weight otherwise)
    if r["c_prev"] != 0.0:
        if prev_x0 is None or prev_x0.shape != x_t.shape:
            got = None if prev_x0 is None else prev_x0.shape
            raise ConfigError(
                f"step {i} of {table.sampler} needs the previous step's x̂0 of shape "
                f"{x_t.shape} as prev_x0, got {got}; pass the x̂0 that step {i - 1} returned"
            )
        prev = prev + r["c_prev"] * prev_x0.astype(np.float64)
    # 4. add σ_t·z
    if r["sigma"] != 0.0:
        if noise is None:
            raise ConfigError(f"step {i} has sigma={r['sigma']:.3g} > 0 but no noise was given")
        if noise.shape != x_t.shape:
            raise ConfigError(f"noise shape {noise.shape} does not match x_t shape {x_t.shape}")
        prev = prev + r["sigma"] * noise.astype(np.float64)
    return prev.astype(x_t.dtype), x0.astype(x_t.dtype)
