"""ONNX Runtime sessions: install checks, providers, tuned session options (numpy + ORT only).

Everything that touches ``onnxruntime`` directly lives here, so the failure modes users hit
(ORT missing, ``onnxruntime`` and ``onnxruntime-gpu`` both installed, no CUDA provider, a
corrupt file) turn into one-line :class:`ddpm.errors.BackendError` / ``ArtifactError``
messages instead of tracebacks from inside the C++ extension.

CPU sessions are tuned for sampling: a diffusion loop calls the same fixed-shape graph
hundreds of times, so we want all graph optimisations, the batch dimension fixed per session
(``fixed_dims``), threads sized to the physical cores (SMT siblings only add contention for
conv kernels; :class:`ddpm.runtime.engines.ort.OrtEngine` spends them on batch chunks run side
by side rather than on one pool) and sequential execution (a UNet graph has little inter-op
parallelism to exploit). Pool threads do not spin-wait
between ops unless asked (``spin=True``): on a machine shared with another busy process a
spinning pool steals the cycles its own peer needs. Only a multi-threaded session spins,
which the runtime uses for a batch it cannot split (one image); ``force_spinning_stop``
keeps the pool from spinning between runs. Measured figures: docs/notes/runtime.md.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

from ddpm.artifact import Contract
from ddpm.errors import ArtifactError, BackendError, first_line

GPU_HINT = 'pip install "ddpm-toolkit[gpu]"'
CPU_HINT = 'pip install "ddpm-toolkit[cpu]"'
_ORT_DISTS = ("onnxruntime", "onnxruntime-gpu")


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def import_ort() -> Any:
    """Import onnxruntime, refusing the broken state of both ORT wheels installed at once."""
    both = [d for d in _ORT_DISTS if _installed(d)]
    if len(both) == 2:
        # The two wheels write the same `onnxruntime` package directory; whichever was
        # installed last wins file by file, which breaks providers in confusing ways.
        raise BackendError(
            "both onnxruntime and onnxruntime-gpu are installed and clash; run "
            "`pip uninstall -y onnxruntime onnxruntime-gpu` then reinstall exactly one: "
            f"`{CPU_HINT}` or `{GPU_HINT}`"
        )
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError(
            f"onnxruntime is not importable ({e}); install it with `{CPU_HINT}` "
            f"(or `{GPU_HINT}` for CUDA)"
        ) from None
    return ort


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    phys = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    cores.add((phys, value.strip()))
    except OSError:
        pass
    return max(1, min(len(cores) or allowed, allowed))


def providers_for(ort: Any, device: str, *, tensorrt: bool = False, cuda_graph: bool = False) -> list:
    """The provider list for ``device``; raises BackendError naming the fix if unavailable."""
    available = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise BackendError(f"unknown device {device!r}; expected cpu or cuda")
    if "CUDAExecutionProvider" not in available:
        raise BackendError(
            "device 'cuda' needs onnxruntime's CUDAExecutionProvider, which this install lacks "
            f"(available: {', '.join(sorted(available))}); install the GPU build with "
            f"`pip uninstall -y onnxruntime && {GPU_HINT}`, or use device 'cpu'"
        )
    cuda_opts = {"device_id": 0}
    if cuda_graph:
        # Replays the captured graph on every run; needs IO binding at fixed addresses.
        cuda_opts["enable_cuda_graph"] = "1"
    providers: list = []
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            raise BackendError(
                "TensorRT was requested but onnxruntime has no TensorrtExecutionProvider; "
                "install TensorRT for your CUDA version, or drop the tensorrt option"
            )
        providers.append(("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": False}))
    providers += [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
    return providers


def session_options(
    ort: Any, num_threads: int | None = None, spin: bool = False, fixed_dims: dict[str, int] | None = None
) -> Any:
    """Tuned CPU options; ``fixed_dims`` pins named free dimensions (e.g. ``{"batch": 8}``) so
    ORT constant-folds the exporter's Shape/Gather/Concat chains into static Reshapes."""
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:  # spin inside a run only: the pool stops spinning when run() returns
        so.add_session_config_entry("session.force_spinning_stop", "1")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(num_threads or physical_cores())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings about unused initializers etc. are noise to users
    for name, value in (fixed_dims or {}).items():
        so.add_free_dimension_override_by_name(name, int(value))
    return so


def create_session(
    path: Path,
    contract: Contract,
    *,
    device: str = "cpu",
    num_threads: int | None = None,
    tensorrt: bool = False,
    cuda_graph: bool = False,
    spin: bool = False,
    fixed_dims: dict[str, int] | None = None,
) -> Any:
    """An InferenceSession for ``path`` whose inputs/outputs match ``contract``."""
    ort = import_ort()
    providers = providers_for(ort, device, tensorrt=tensorrt, cuda_graph=cuda_graph)
    try:
        sess = ort.InferenceSession(
            str(path), sess_options=session_options(ort, num_threads, spin, fixed_dims), providers=providers
        )
    except Exception as e:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail...)
        raise ArtifactError(
            f"{path}: onnxruntime cannot load this model ({first_line(e)}); the file is corrupt "
            "or incomplete: re-export it with `ddpm-export CKPT`"
        ) from None
    got = tuple(i.name for i in sess.get_inputs())
    if got != contract.input_names:
        raise ArtifactError(
            f"{path}: graph inputs {got} differ from its contract's {contract.input_names}; "
            "the file was edited after export: re-export it with `ddpm-export CKPT`"
        )
    return sess
