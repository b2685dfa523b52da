"""Sampling runtime: numpy + onnxruntime on the default path, torch only when asked for.

    from ddpm.runtime import Sampler
    images = Sampler.from_path("model.onnx").sample(16, steps=50, seed=0).images  # uint8 NHWC

Importing this package never imports torch; the ``torchscript`` / ``torch`` backends and the
CUDA loop import it lazily inside their constructors.
"""

from ddpm.runtime.assets import default_model_path
from ddpm.runtime.backends import BACKENDS, DEVICES
from ddpm.runtime.plan import Plan
from ddpm.runtime.sampler import Sampler, SampleResult

__all__ = ["BACKENDS", "DEVICES", "Plan", "SampleResult", "Sampler", "default_model_path"]
