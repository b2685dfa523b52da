"""Model backends: one callable per engine that maps (x_t, t, y) -> network output in numpy.

- ``ort``         model.onnx on ONNX Runtime (numpy + onnxruntime only; the default).
- ``torchscript`` model.ts via ``torch.jit.load`` (CPU or CUDA).
- ``torch``       ckpt.pt rebuilt with :mod:`ddpm.models.checkpoint`: the reference.

Every backend is fed the same float32 x_t, int64 timesteps and int64 labels by the sampler
loop and returns float32 (B, C, H, W); the loop, the noise and the update are shared, so
backend parity is a property of the network alone. torch is imported lazily inside the two
torch backends, never at module level: the ORT path must run where torch is not installed.
Calls hold no per-call state, so one backend may be called from many threads at once.
"""

from __future__ import annotations

import threading
import warnings
import zipfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ddpm import artifact
from ddpm.artifact import Contract, TensorSpec
from ddpm.errors import ArtifactError, BackendError, DDPMError
from ddpm.runtime.ort_session import create_session, physical_cores

BACKENDS = ("ort", "torchscript", "torch")
DEVICES = ("cpu", "cuda")
#: File looked for when a backend is given a folder (what ddpm-export / ddpm-train write).
DEFAULT_FILES = {"ort": "model.onnx", "torchscript": "model.ts", "torch": "ckpt.pt"}
#: ``precision`` -> suffix of the ONNX file holding that graph (ddpm-export --int8 writes it).
PRECISIONS = {"fp32": "", "int8": "_int8"}


def resolve_file(path: str | Path, backend: str, precision: str = "fp32") -> Path:
    """``path`` itself, or the backend's default file inside the folder ``path``.

    ``precision="int8"`` (ORT only) maps ``model.onnx`` / a folder to ``model_int8.onnx``
    (and the bundled ``digits.onnx`` to ``digits_int8.onnx``) unless the name already says int8.
    """
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and backend != "ort":
        raise BackendError(f"--precision {precision} needs --backend ort (a quantised ONNX graph)")
    p = Path(path)
    if p.is_dir():
        p = p / DEFAULT_FILES[backend]
    suffix = PRECISIONS[precision]
    if suffix and not p.stem.endswith(suffix):
        p = p.with_name(f"{p.stem}{suffix}{p.suffix}")
        if not p.is_file():
            raise ArtifactError(
                f"{precision} model {str(p)!r} not found; write it with `ddpm-export CKPT --int8` "
                "or drop --precision"
            )
    if not p.is_file():
        raise ArtifactError(
            f"model file {str(p)!r} not found; pass the {DEFAULT_FILES[backend]} written by "
            f"{'ddpm-train' if backend == 'torch' else 'ddpm-export'} (backend {backend!r})"
        )
    return p


#: Fixed-batch CPU sessions an OrtBackend keeps (least recently used dropped first). Each
#: holds its own copy of the weights; a sampling run needs at most three (full chunks, the
#: last partial batch's chunks, a single image).
MAX_FIXED_SESSIONS = 4


class OrtBackend:
    """model.onnx on ONNX Runtime: CPU sessions tuned for the sampling loop, or a CUDA session.

    A diffusion loop calls one graph at one batch size hundreds of times, so on the CPU each
    batch size gets its own session with the batch dimension fixed (ORT then folds the
    exporter's Shape/Gather/Concat chains away), and a batch of B >= 2 is split across the
    cores: ``threads`` contiguous chunks, each run by a single-threaded session, concurrently
    (ORT releases the GIL). A UNet graph is ~700 small ops; one multi-threaded run pays a
    thread hand-off per op, while the split runs pay none. Measured on the issue-7 UNet2DModel
    (batch 16, 2 cores): 91.8 ms per call on one 2-thread session, 82.5 ms as two 1-thread
    runs of 8. A single image runs on one session with all threads. Each image's arithmetic
    does not depend on the split, so neither do the samples (tests pin it bit for bit).
    """

    name = "ort"

    def __init__(
        self, path: Path, device: str = "cpu", *, num_threads: int | None = None, spin: bool = False,
        **session_kw: Any,
    ) -> None:
        if zipfile.is_zipfile(path):
            raise ArtifactError(
                f"{path}: is a TorchScript archive, not ONNX; pass --backend torchscript "
                "or the model.onnx written beside it"
            )
        self.contract = artifact.read(path)
        if self.contract.graph != "model":
            raise ArtifactError(
                f"{path}: is a whole-step graph ({self.contract.graph!r}); ddpm-run samples "
                "the plain model graph: pass the model.onnx exported without --with-step"
            )
        self.path = Path(path)
        self.device = device
        self.threads = max(1, int(num_threads or physical_cores()))
        self._session_kw = dict(device=device, spin=spin, **session_kw)
        # The dynamic-batch session: checks the file once, and serves non-CPU devices.
        self.session = create_session(path, self.contract, num_threads=self.threads, **self._session_kw)
        self._names = self.contract.input_names
        self._output = self.session.get_outputs()[0].name
        dim = self.session.get_inputs()[0].shape[0]
        self._batch_dim = dim if isinstance(dim, str) and dim else None
        self._split = device == "cpu" and self.threads > 1
        self._fixed: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _session_for(self, batch: int, threads: int) -> Any:
        """The CPU session for ``batch`` images on ``threads`` threads, created on first use."""
        if self.device != "cpu" or self._batch_dim is None:
            return self.session
        key = (threads, batch)
        with self._sessions_lock:
            sess = self._fixed.get(key)
            if sess is None:
                sess = create_session(
                    self.path, self.contract, num_threads=threads,
                    fixed_dims={self._batch_dim: batch}, **self._session_kw,
                )
                self._fixed[key] = sess
                while len(self._fixed) > MAX_FIXED_SESSIONS:
                    self._fixed.popitem(last=False)
            else:
                self._fixed.move_to_end(key)
            return sess

    def _run(self, sess: Any, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        feeds = {self._names[0]: x, self._names[1]: t}
        if y is not None:
            feeds[self._names[2]] = y
        return sess.run([self._output], feeds)[0]

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        b = x.shape[0]
        workers = min(self.threads, b) if self._split else 1
        if workers <= 1:
            return self._run(self._session_for(b, self.threads), x, t, y)
        bounds = [b * i // workers for i in range(workers + 1)]  # near-equal contiguous chunks
        parts = [
            (self._session_for(hi - lo, 1), x[lo:hi], t[lo:hi], None if y is None else y[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        with self._sessions_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="ddpm-ort")
            pool = self._pool
        futures = [pool.submit(self._run, *part) for part in parts[1:]]
        first = self._run(*parts[0])  # this thread is one of the workers
        return np.concatenate([first, *(f.result() for f in futures)])


def _torch_device(device: str, num_threads: int | None = None) -> Any:
    try:
        import torch
    except ImportError:
        raise BackendError(
            "the torchscript and torch backends need PyTorch, which is not installed; "
            "use --backend ort, or `pip install torch`"
        ) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError(
            "device 'cuda' was asked for but torch sees no CUDA GPU; pass --device cpu, or "
            'install a CUDA build of torch (`pip install "ddpm-toolkit[gpu]"`)'
        )
    if num_threads:
        # Process-wide in torch; set only when asked (oversubscribed OpenMP spins badly).
        torch.set_num_threads(int(num_threads))
    return torch.device(device)


class _TorchCallable:
    """Shared call path of the two torch backends: numpy in, numpy out, no autograd."""

    module: Any
    dev: Any

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            args = [torch.from_numpy(x).to(self.dev), torch.from_numpy(t).to(self.dev)]
            if y is not None:
                args.append(torch.from_numpy(y).to(self.dev))
            out = self.module(*args)
            return out.float().cpu().numpy()


class TorchScriptBackend(_TorchCallable):
    """model.ts (TorchScript, same signature as the ONNX graph, contract in extra files)."""

    name = "torchscript"

    def __init__(self, path: Path, device: str = "cpu", num_threads: int | None = None) -> None:
        self.contract = artifact.read(path)
        self.device = device
        self.dev = _torch_device(device, num_threads)
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "jit is deprecated": noise to users
                self.module = torch.jit.load(str(path), map_location=self.dev).eval()
        except Exception as e:  # torch raises RuntimeError/ValueError subtypes for bad archives
            raise ArtifactError(
                f"{path}: torch.jit.load cannot read this TorchScript file "
                f"({str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__}); "
                "re-export it with `ddpm-export CKPT`"
            ) from None


def contract_from_checkpoint(ckpt: dict[str, Any], source: str) -> Contract:
    """The contract ddpm-export would write for ``ckpt``, so all backends read one spec."""
    from ddpm.schedule import ScheduleConfig

    data = ckpt.get("data") or {}
    try:
        size = data["image_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        c, k = int(data["channels"]), int(data.get("num_classes") or 0)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(
            f"{source}: checkpoint 'data' {data!r} lacks image_size/channels ({e}); retrain"
        ) from None
    inputs = [TensorSpec("sample", "float32", ("batch", c, h, w)), TensorSpec("timestep", "int64", ("batch",))]
    if k > 0:
        inputs.append(TensorSpec("class_labels", "int64", ("batch",)))
    try:
        return artifact.contract_for(
            arch=ckpt["arch"],
            model_config=dict(ckpt["model_config"]),
            schedule=ScheduleConfig.from_dict(dict(ckpt["schedule"])),
            image_shape=(c, h, w),
            num_classes=k,
            inputs=inputs,
            outputs=[TensorSpec("model_output", "float32", ("batch", c, h, w))],
            versions=dict(ckpt.get("versions") or {}),
            value_range=tuple(float(v) for v in data.get("value_range") or (-1.0, 1.0)),
        )
    except DDPMError as e:
        raise ArtifactError(f"{source}: checkpoint describes an invalid model ({e}); retrain") from None


class TorchBackend(_TorchCallable):
    """ckpt.pt rebuilt in PyTorch (EMA weights by default): the reference backend."""

    name = "torch"

    def __init__(
        self, path: Path, device: str = "cpu", weights: str = "ema", num_threads: int | None = None
    ) -> None:
        self.dev = _torch_device(device, num_threads)
        self.device = device
        from ddpm.models.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        self.contract = contract_from_checkpoint(ckpt, str(path))
        model, _ = model_from_checkpoint(ckpt, weights=weights)
        self.module = model.to(self.dev).eval()


def load_backend(path: str | Path, backend: str, device: str, **kw: Any):
    """Open ``path`` with ``backend`` on ``device``; every failure is a one-line DDPMError."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    p = resolve_file(path, backend, kw.get("precision", "fp32"))
    if backend == "ort":
        ort_kw = {k: v for k, v in kw.items() if k in ("num_threads", "tensorrt", "cuda_graph", "spin")}
        if device == "cuda":
            from ddpm.runtime.cuda_loop import OrtCudaBackend

            return OrtCudaBackend(p, **ort_kw)
        return OrtBackend(p, device, **ort_kw)
    if backend == "torchscript":
        return TorchScriptBackend(p, device, num_threads=kw.get("num_threads"))
    return TorchBackend(p, device, weights=kw.get("weights", "ema"), num_threads=kw.get("num_threads"))
