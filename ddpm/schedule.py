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
from dataclasses import dataclass

import numpy as np

from ddpm.errors import ConfigError

BETA_SCHEDULES = ("linear", "cosine", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
SPACINGS = ("leading", "trailing", "linspace")
SAMPLERS = ("ddpm", "ddim")

#: Column order of :meth:`StepTable.as_array`; kernels and ONNX graphs index by position.
TABLE_COLUMNS = ("x0_xt", "x0_out", "c_x0", "c_xt", "c_out", "sigma")


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

    def __post_init__(self) -> None:
        if int(self.num_train_timesteps) < 1:
            raise ConfigError(
                f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}"
            )
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("variance_type", self.variance_type, VARIANCE_TYPES)
        if self.clip_sample_range <= 0:
            raise ConfigError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")

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
        """β_1..β_T as float64, shape (T,)."""
        return make_betas(
            self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end
        )

    def alphas_cumprod(self) -> np.ndarray:
        """ᾱ_t = Π_{s<=t} (1 - β_s), float64, shape (T,)."""
        return np.cumprod(1.0 - self.betas())

    def betas_sha256(self) -> str:
        """Hash of the float64 β table: the artifact contract pins the exact schedule."""
        return hashlib.sha256(np.ascontiguousarray(self.betas(), "<f8").tobytes()).hexdigest()


def make_betas(
    schedule: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """β schedule in float64. ``linear`` (DDPM), ``scaled_linear`` (LDM), ``cosine`` (iDDPM)."""
    _check_choice("beta_schedule", schedule, BETA_SCHEDULES)
    T = int(num_train_timesteps)
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    # Cosine (Nichol & Dhariwal eq. 17), s = 0.008, β clipped at 0.999.
    def alpha_bar(t: np.ndarray) -> np.ndarray:
        return np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    i = np.arange(T, dtype=np.float64)
    betas = 1.0 - alpha_bar((i + 1) / T) / alpha_bar(i / T)
    return np.minimum(betas, 0.999)


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
    num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading"
) -> np.ndarray:
    """The model timesteps visited by an N-step sampler, descending, int64 (N,).

    Same conventions as diffusers' ``set_timesteps`` (``steps_offset`` = 0).
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
        ts = (np.arange(0, N) * (T // N)).round()[::-1]
    else:  # trailing
        ts = np.round(np.arange(T, 0, -T / N)) - 1
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

    def __len__(self) -> int:
        return len(self.timesteps)

    def as_array(self, dtype=np.float32) -> np.ndarray:
        """Coefficients as one (N, 6) array in :data:`TABLE_COLUMNS` order, cast once."""
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


def step_table(
    config: ScheduleConfig,
    num_inference_steps: int,
    *,
    sampler: str = "ddpm",
    spacing: str = "leading",
    eta: float = 0.0,
    clipped_eps: bool = True,
) -> StepTable:
    """Coefficient table for ``sampler`` ("ddpm" ancestral or "ddim" with η) on N steps.

    ``clipped_eps`` (DDIM only): build the direction term from ε̂ re-derived from the clipped
    x̂0 (the default, correct under guidance) or from the raw output (diffusers' default,
    ``use_clipped_model_output=False``). Without clipping the two are the same update.
    """
    _check_choice("sampler", sampler, SAMPLERS)
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    ts = inference_timesteps(config.num_train_timesteps, num_inference_steps, spacing)
    ac_all = config.alphas_cumprod()
    ac = ac_all[ts]
    # The step after the last one lands on x_0: ᾱ_prev = 1 (diffusers' set_alpha_to_one).
    ac_prev = np.concatenate([ac_all[ts[1:]], [1.0]])
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
    )


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
    # 2. optional clipping of x̂0
    if table.clip_sample:
        x0 = np.clip(x0, -table.clip_sample_range, table.clip_sample_range)
    # 3. posterior mean (DDPM eq. 7) or DDIM direction (DDIM eq. 12)
    prev = r["c_x0"] * x0 + r["c_xt"] * xt + r["c_out"] * out
    # 4. add σ_t·z
    if r["sigma"] != 0.0:
        if noise is None:
            raise ConfigError(f"step {i} has sigma={r['sigma']:.3g} > 0 but no noise was given")
        if noise.shape != x_t.shape:
            raise ConfigError(f"noise shape {noise.shape} does not match x_t shape {x_t.shape}")
        prev = prev + r["sigma"] * noise.astype(np.float64)
    return prev.astype(x_t.dtype), x0.astype(x_t.dtype)
