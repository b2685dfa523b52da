"""The contenders of ``bench_sampling.py``: one ``run(batch, steps)`` per way of sampling.

Every contender samples the same network (same weights) for the same number of DDPM steps
end to end -- noise draw, every UNet call, every update -- and returns nothing; the harness
times it. Contenders:

- ``diffusers``      ``DDPMPipeline`` (torch eager), diffusers' own scheduler and loop.
- ``torch``          our Sampler loop on the ``torch`` backend (ckpt.pt, eager).
- ``torch_compile``  the same with the module wrapped in ``torch.compile`` (inductor, CPU).
- ``ort_default``    our Sampler loop on a bare ``onnxruntime.InferenceSession(model.onnx)``
                     with default SessionOptions: what a user gets by hand.
- ``ddpm_run``       ``Sampler.from_path(...)`` on the tuned session (what ddpm-run does);
                     ``ddpm_run_opt`` the same on ``model_optimized.onnx`` (ddpm-export
                     --optimize), ``ddpm_run_opt_spin`` that with ``--spin``, ``int8``
                     on ``model_int8.onnx`` (ddpm-export --int8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Contender:
    name: str
    run: Callable[[int, int], Any]  # (batch, steps) -> anything, sampled end to end
    note: str = ""


class _BareOrt:
    """A Sampler backend around a default-options InferenceSession (no tuning at all)."""

    name, device = "ort", "cpu"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        from ddpm import artifact

        self.contract = artifact.read(path)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._names = self.contract.input_names

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        feeds = {self._names[0]: x, self._names[1]: t}
        if y is not None:
            feeds[self._names[2]] = y
        return self.session.run(None, feeds)[0]


def _sampler_run(sampler, guidance: float) -> Callable[[int, int], Any]:
    def run(batch: int, steps: int) -> Any:
        return sampler.sample(batch, steps=steps, batch_size=batch, guidance=guidance, seed=0)

    return run


def diffusers_pipeline(unet, schedule: dict) -> Contender:
    """DDPMPipeline with a DDPMScheduler configured like our schedule (same betas)."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler

    sched = DDPMScheduler(
        num_train_timesteps=schedule["num_train_timesteps"], beta_start=schedule["beta_start"],
        beta_end=schedule["beta_end"], beta_schedule=schedule["beta_schedule"],
        clip_sample=schedule.get("clip_sample", True), prediction_type=schedule["prediction_type"],
    )
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)

    def run(batch: int, steps: int) -> Any:
        g = torch.Generator().manual_seed(0)
        return pipe(batch_size=batch, num_inference_steps=steps, generator=g, output_type="np")

    return Contender("diffusers", run, "diffusers DDPMPipeline, torch eager")


def torch_loop(ckpt: Path, guidance: float, *, compile: bool = False) -> Contender:
    import torch

    from ddpm.runtime.sampler import Sampler

    s = Sampler.from_path(ckpt, backend="torch")
    if compile:
        s._backend.module = torch.compile(s._backend.module)
        return Contender("torch_compile", _sampler_run(s, guidance),
                         "Sampler loop, torch.compile(module) (inductor CPU, default mode)")
    return Contender("torch", _sampler_run(s, guidance), "Sampler loop, torch eager")


def ort_default(onnx_path: Path, guidance: float) -> Contender:
    from ddpm.runtime.sampler import Sampler

    s = Sampler(_BareOrt(onnx_path), path=onnx_path)
    return Contender("ort_default", _sampler_run(s, guidance),
                     "Sampler loop, onnxruntime.InferenceSession(model.onnx) default options")


def ddpm_run(path: Path, guidance: float, *, name: str = "ddpm_run",
             threads: int | None = None, spin: bool = False, note: str = "") -> Contender:
    from ddpm.runtime.sampler import Sampler

    s = Sampler.from_path(path, backend="ort", num_threads=threads, spin=spin)
    return Contender(name, _sampler_run(s, guidance),
                     note or f"Sampler.from_path({path.name}) tuned ORT session (= ddpm-run)")
