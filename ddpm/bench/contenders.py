"""The contenders of the sampling benchmark: one ``run(batch, steps)`` per way of sampling.

Every contender samples the same network (same weights) for the same number of DDPM steps
end to end -- noise draw, every UNet call, every update -- and returns nothing; the harness
times it. Every one runs on the harness's ``threads``. Names say what runs:

- ``diffusers_pipeline``           diffusers ``DDPMPipeline`` (torch eager UNet, diffusers'
                                   scheduler and loop): the baseline.
- ``host_loop_torch_eager``        our numpy host loop around the eager torch UNet (ckpt.pt).
- ``host_loop_torch_compiled_unet`` the same numpy loop around ``torch.compile(unet)``
                                   (inductor, CPU): only the UNet call is compiled.
- ``host_loop_torch_bf16_autocast`` the same loop, UNet under ``torch.autocast("cpu", bf16)``.
- ``host_loop_ort_default_session`` the loop on a bare ``onnxruntime.InferenceSession`` with
                                   default options except the thread count.
- ``ddpm_run_ort``                 ``Sampler.from_path(model.onnx, "ort")``, what ddpm-run does;
                                   ``_optimized`` on model_optimized.onnx (ddpm-export
                                   --optimize), ``_optimized_spin`` that with ``spin=True``,
                                   ``_int8`` on model_int8.onnx (ddpm-export --int8, QDQ).
- ``ddpm_run_openvino_f32``        ``Sampler.from_path(model.onnx, "openvino")``, fp32 pinned;
                                   ``_bf16`` with compute precision bf16 (CPUs with native
                                   bf16 only), ``_int8`` OpenVINO running model_int8.onnx.
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


class _BareOrtEngine:
    """An engine around a default-options InferenceSession (only the thread count set)."""

    name, device = "ort", "cpu"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        from ddpm import artifact

        self.path = Path(path)
        self.contract = artifact.read(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads  # ORT's default is every logical CPU
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._names = self.contract.input_names

    def run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        feeds = {self._names[0]: x, self._names[1]: t}
        if y is not None:
            feeds[self._names[2]] = y
        return self.session.run(None, feeds)[0]

    def close(self) -> None:
        self.session = None


class _Bf16Autocast:
    """A torch UNet called under CPU bf16 autocast, returning float32."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, *args: Any) -> Any:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(*args).float()


def _sampler_run(sampler, guidance: float) -> Callable[[int, int], Any]:
    def run(batch: int, steps: int) -> Any:
        return sampler.sample(batch, steps=steps, batch_size=batch, guidance=guidance, seed=0,
                              sampler="ddpm", eta=0.0)

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

    return Contender("diffusers_pipeline", run, "diffusers DDPMPipeline, torch eager")


TORCH_MODES = {
    "eager": ("host_loop_torch_eager", "numpy host loop, torch eager UNet (ckpt.pt)"),
    "compile": ("host_loop_torch_compiled_unet",
                "numpy host loop around torch.compile(unet) (inductor CPU, default mode)"),
    "bf16": ("host_loop_torch_bf16_autocast", "numpy host loop, UNet under torch.autocast(cpu, bf16)"),
}


def torch_loop(ckpt: Path, guidance: float, threads: int, *, mode: str = "eager") -> Contender:
    import torch

    from ddpm.runtime.engines import open_engine
    from ddpm.runtime.sampler import Sampler

    engine = open_engine(ckpt, "torch", "cpu", num_threads=threads)
    if mode == "compile":
        engine.module = torch.compile(engine.module)
    elif mode == "bf16":
        engine.module = _Bf16Autocast(engine.module)
    name, note = TORCH_MODES[mode]
    return Contender(name, _sampler_run(Sampler.from_engine(engine), guidance), note)


def ort_default(onnx_path: Path, guidance: float, threads: int) -> Contender:
    from ddpm.runtime.sampler import Sampler

    s = Sampler.from_engine(_BareOrtEngine(onnx_path, threads))
    return Contender("host_loop_ort_default_session", _sampler_run(s, guidance),
                     "numpy host loop, onnxruntime.InferenceSession(model.onnx) default options")


def ddpm_run(path: Path, guidance: float, threads: int, *, name: str = "ddpm_run_ort",
             backend: str = "ort", note: str = "", **options: Any) -> Contender:
    """``Sampler.from_path(path, backend, ...)``: exactly what ddpm-run opens."""
    from ddpm.runtime.sampler import Sampler

    s = Sampler.from_path(path, backend=backend, num_threads=threads, **options)
    return Contender(name, _sampler_run(s, guidance),
                     note or f"Sampler.from_path({path.name}, {backend!r}) (= ddpm-run)")
