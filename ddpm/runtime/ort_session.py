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
keeps the pool from spinning between runs. Measured figures: docs/cpu-engines.md.
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


#: Substrings of ORT errors that mean CUDA/cuDNN/TensorRT libraries could not be loaded.
_LIBRARY_ERRORS = ("libcu", "libnv", "cudnn", "cublas", "cudart", "CUDA_PATH", "provider bridge",
                   "LoadLibrary", "dlopen", "cannot open shared object", "TensorRT")


def preload_cuda(ort: Any) -> None:
    """Load the CUDA / cuDNN libraries ORT's CUDA EP needs before any session is built.

    ``onnxruntime.preload_dlls()`` (ORT >= 1.21) finds the ones the nvidia-* wheels or torch
    installed; without it the EP only looks on the system library path, and a session built
    before torch is imported silently runs on the CPU EP.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # missing libraries surface as a checked provider error below
            pass


def providers_for(
    ort: Any, device: str, *, tensorrt: bool = False, cuda_graph: bool = False, tf32: bool = False,
    trt_cache: Path | None = None, cuda_options: dict[str, str] | None = None,
) -> list:
    """The provider list for ``device``; raises BackendError (exit 2) naming the fix when the
    install or the device cannot honour an option.

    ``tf32`` lets the CUDA EP use TF32 tensor-core math: faster convolutions, but images
    differ from the CPU ones beyond fp32 rounding, so it is off unless asked for.
    ``trt_cache`` is the TensorRT engine cache folder (engines take minutes to build).
    ``cuda_options`` adds CUDA EP options (e.g. ``user_compute_stream``).
    """
    available = set(ort.get_available_providers())
    if device == "cpu":
        for flag, on, why in (("cuda_graph", cuda_graph, "CUDA graphs are a CUDA EP feature"),
                              ("tensorrt", tensorrt, "TensorRT runs on CUDA devices only"),
                              ("tf32", tf32, "TF32 is CUDA tensor-core math")):
            if on:
                dashed = flag.replace("_", "-")
                raise BackendError(
                    f"--{dashed} needs --device cuda, got device 'cpu' ({why}); drop --{dashed} "
                    "or pass --device cuda", field=flag,
                )
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise BackendError(f"unknown device {device!r}; expected cpu or cuda", field="device")
    if "CUDAExecutionProvider" not in available:
        raise BackendError(
            "device 'cuda' needs onnxruntime's CUDAExecutionProvider, which this install lacks "
            f"(available: {', '.join(sorted(available))}); install the GPU build with "
            f"`pip uninstall -y onnxruntime && {GPU_HINT}`, or use device 'cpu'", field="device",
        )
    cuda_opts = {"device_id": "0", "use_tf32": "1" if tf32 else "0", **(cuda_options or {})}
    if cuda_graph:
        # Replays the captured graph on every run; needs IO binding at fixed addresses.
        cuda_opts["enable_cuda_graph"] = "1"
    providers: list = []
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            raise BackendError(
                "--tensorrt needs onnxruntime's TensorrtExecutionProvider, which this install "
                f"lacks (available: {', '.join(sorted(available))}); install TensorRT for your "
                "CUDA version (pip install tensorrt), or drop --tensorrt", field="tensorrt",
            )
        trt = {"device_id": "0", "trt_fp16_enable": "0", "trt_engine_cache_enable": "1",
               "trt_timing_cache_enable": "1"}
        if trt_cache is not None:
            trt["trt_engine_cache_path"] = trt["trt_timing_cache_path"] = str(trt_cache)
        if cuda_graph:
            trt["trt_cuda_graph_enable"] = "1"
        providers.append(("TensorrtExecutionProvider", trt))
    providers += [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
    return providers


def check_providers(sess: Any, path: Path, device: str, *, tensorrt: bool = False) -> None:
    """Raise BackendError when the session silently fell back from the requested provider."""
    if device != "cuda":
        return
    used = list(sess.get_providers())
    want = ["CUDAExecutionProvider"] + (["TensorrtExecutionProvider"] if tensorrt else [])
    missing = [p for p in want if p not in used]
    if missing:
        raise BackendError(
            f"{path}: onnxruntime fell back to {', '.join(used)} without {', '.join(missing)} "
            "(its CUDA/cuDNN or TensorRT libraries did not load); install the [gpu] extra's "
            f"libraries (`{GPU_HINT}`, and tensorrt for tensorrt=True) or use device='cpu'",
            field="tensorrt" if "TensorrtExecutionProvider" in missing else "device",
        )


def session_options(
    ort: Any, num_threads: int | None = None, spin: bool = False, fixed_dims: dict[str, int] | None = None,
    *, strict_device: bool = False,
) -> Any:
    """Tuned CPU options; ``fixed_dims`` pins named free dimensions (e.g. ``{"batch": 8}``) so
    ORT constant-folds the exporter's Shape/Gather/Concat chains into static Reshapes.
    ``strict_device`` makes session creation fail if any node would run on the CPU EP
    (``session.disable_cpu_ep_fallback``): for a fully fixed-shape graph on CUDA, where a
    CPU node would mean a host round trip every step and break CUDA graph capture."""
    so = ort.SessionOptions()
    if strict_device:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
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
    tf32: bool = False,
    spin: bool = False,
    fixed_dims: dict[str, int] | None = None,
    strict_device: bool = False,
    cuda_options: dict[str, str] | None = None,
) -> Any:
    """An InferenceSession for ``path`` whose inputs/outputs match ``contract``, on the
    providers asked for (checked after creation: ORT falls back to the CPU EP silently)."""
    ort = import_ort()
    trt_cache = Path(path).parent / "trt_cache" if tensorrt else None
    providers = providers_for(ort, device, tensorrt=tensorrt, cuda_graph=cuda_graph, tf32=tf32,
                              trt_cache=trt_cache, cuda_options=cuda_options)
    if device == "cuda":
        preload_cuda(ort)
        if trt_cache is not None:
            trt_cache.mkdir(exist_ok=True)
    so = session_options(ort, num_threads, spin, fixed_dims, strict_device=strict_device and device != "cpu")
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as e:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail...)
        msg = first_line(e)
        if device == "cuda" and any(k.lower() in msg.lower() for k in _LIBRARY_ERRORS):
            raise BackendError(
                f"{path}: onnxruntime's {device} provider failed to start ({msg}); its CUDA / "
                f"cuDNN libraries are missing or mismatched: `{GPU_HINT}`, or use device='cpu'",
                field="device",
            ) from None
        if strict_device and "fallback" in msg.lower():
            raise BackendError(
                f"{path}: some nodes of this graph cannot run on {device} ({msg}); re-export it "
                "with `ddpm-export CKPT --with-step`, or use loop='host'", field="loop",
            ) from None
        raise ArtifactError(
            f"{path}: onnxruntime cannot load this model ({msg}); the file is corrupt "
            "or incomplete: re-export it with `ddpm-export CKPT`", field="path",
        ) from None
    check_providers(sess, Path(path), device, tensorrt=tensorrt)
    got = tuple(i.name for i in sess.get_inputs())
    if got != contract.input_names:
        raise ArtifactError(
            f"{path}: graph inputs {got} differ from its contract's {contract.input_names}; "
            "the file was edited after export: re-export it with `ddpm-export CKPT`", field="path",
        )
    return sess
