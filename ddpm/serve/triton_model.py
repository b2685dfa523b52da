"""``TritonPythonModel`` of ``ddpm_sampler``: whole sampling inside Triton's Python backend.

Each instance (one stub process per ``instance_group`` entry) opens one
:class:`ddpm.runtime.Sampler` on ONNX Runtime -- CPU for KIND_CPU, CUDA for KIND_GPU -- and a
thread pool (``workers``; default ``max_batch_size``). ``execute`` receives the dynamic batch
Triton gathered (a list of requests), starts every request on the pool and returns; each
request is answered through its own response sender as soon as its images are ready. A bad
request gets a ``TritonError`` carrying our one-line message while the others in the same
batch still get their images, and the instance never dies for a client's mistake.

Why requests are run side by side rather than fused into one network call: every request has
its own seed, and the runtime's noise is keyed by (seed, step, sample index) inside one
:class:`ddpm.runtime.Plan`, which carries one seed. Fusing different seeds would need a
multi-seed sampling loop the public runtime does not offer. On the CPU, single-thread ORT runs
of concurrent requests on one shared (thread-safe) session keep every core busy, which is what
batching buys there. The batch axis of a single request (rows) stays available to clients that
want several jobs per round trip.

``triton_python_backend_utils`` exists only inside the stub, so it is imported in the methods.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.errors import DDPMError
from ddpm.serve.requests import DEFAULT_MAX_IMAGES, INPUTS, OUTPUT, RequestRunner, error_message


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _params(model_config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def _send(pb_utils: Any, sender: Any, fut: Future) -> None:
    """Answer one request: its images, or a TritonError with our one-line message."""
    try:
        response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, fut.result())])
    except Exception as e:  # a client error or a bug: answer this request, keep serving
        msg = error_message(e)
        if isinstance(e, DDPMError):
            pb_utils.Logger.log_info(f"ddpm_sampler rejected a request: {msg}")
        else:
            pb_utils.Logger.log_error(msg)
        response = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg))
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class TritonPythonModel:
    """Python-backend model: ``initialize`` opens the Sampler, ``execute`` serves a batch."""

    def initialize(self, args: dict[str, str]) -> None:
        from ddpm.runtime import Sampler
        from ddpm.serve.launch import check_numpy

        check_numpy()  # a server started without ddpm.serve.launch gets the same clear error
        config = json.loads(args["model_config"])
        params = _params(config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        model = Path(params.get("model_path") or "model.onnx")
        if not model.is_absolute():
            model = version_dir / model
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            # One stub process per instance: pin it to Triton's chosen GPU before ORT starts CUDA.
            os.environ["CUDA_VISIBLE_DEVICES"] = args.get("model_instance_device_id", "0")
            device = "cuda"
        threads = int(params.get("num_threads") or 1)
        sampler = Sampler.from_path(model, "ort", device, num_threads=threads)
        max_images = int(params.get("max_images") or DEFAULT_MAX_IMAGES)
        self.runner = RequestRunner(sampler, max_images=max_images)
        # Default: one worker per request Triton may hand over at once, so every request of a
        # dynamic batch starts now, as concurrent callers of a local Sampler would; fewer
        # workers than that lose CPU share to other processes on a busy machine (measured).
        workers = int(params.get("workers") or config.get("max_batch_size") or _cpu_count())
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddpm_sampler")

    def execute(self, requests: list[Any]) -> None:
        """Start every request of the batch on the pool and return at once.

        Each request is answered through its response sender when its images are ready, so
        the instance takes the next dynamic batch without waiting for the slowest request of
        this one (returning responses from ``execute`` would hold every request of a batch
        until all of them finish).
        """
        import triton_python_backend_utils as pb_utils

        for request in requests:
            found = {}
            for f in INPUTS:
                t = pb_utils.get_input_tensor_by_name(request, f.name)
                if t is not None:
                    found[f.name] = np.array(t.as_numpy(), copy=True)  # outlives the request
            sender = request.get_response_sender()
            fut = self.pool.submit(self.runner.run, found)
            fut.add_done_callback(functools.partial(_send, pb_utils, sender))
        return None

    def finalize(self) -> None:
        self.pool.shutdown(wait=True)
