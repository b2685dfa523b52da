"""Sampling runtime: numpy + onnxruntime on the default path, torch only when asked for.

    from ddpm.runtime import Sampler
    with Sampler.from_path("model.onnx") as s:
        images = s.sample(16, steps=50, seed=0).images  # uint8 NHWC

Layers, lowest first (a test forbids import circles): ``ort_session`` / ``forksafe`` /
``threads`` -> ``engines`` (run the network) -> ``plan`` (validate a request) -> ``loops``
(noise, guidance, update) -> ``sampler`` (the public face) -> ``cli``. Importing this
package never imports torch; the ``torchscript`` / ``torch`` engines and the CUDA loop
import it lazily when opened.
"""

from ddpm.runtime.assets import default_model_path
from ddpm.runtime.engines import BACKENDS, DEVICES, open_engine
from ddpm.runtime.plan import Plan
from ddpm.runtime.sampler import Sampler, SampleResult
from ddpm.runtime.threads import set_thread_budget, thread_budget

__all__ = [
    "BACKENDS", "DEVICES", "Plan", "SampleResult", "Sampler", "default_model_path", "open_engine",
    "set_thread_budget", "thread_budget",
]
