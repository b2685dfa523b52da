"""Parity validation: torch eager vs TorchScript, ONNX Runtime (CPU) and pt2 on the same inputs.

As optimum-onnx's ``validate_model_outputs``: check the session's input/output names against
the spec, run several batches, check shapes (:class:`ShapeError`) and max-abs differences
(:class:`AtolError`, exit 1) with the numbers in the message. ``max_rel`` is
``max|out - ref| / max|ref|`` per batch: scale-free, and stable where ``ref`` crosses zero.

The batches cover batch sizes 1 and 7, timesteps 0 and T-1, and (when conditional) labels
0, K-1 and the null label K; they are seeded, so a failure reproduces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddpm.errors import AtolError, ShapeError, ValidationError, first_line
from ddpm.export.spec import GraphSpec

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class ParityRow:
    backend: str
    max_abs: float
    max_rel: float
    atol: float
    batches: str  # e.g. "1,1,7"

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.atol


@dataclass
class ParityReport:
    """One row per backend compared against the reference; ``table()`` prints them."""

    reference: str
    rows: list[ParityRow] = field(default_factory=list)

    def table(self) -> str:
        head = f"{'backend':<28} {'batches':<8} {'max-abs':>10} {'max-rel':>10} {'atol':>9}  ok"
        lines = [f"parity vs {self.reference}", head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.backend:<28} {r.batches:<8} {r.max_abs:>10.3e} {r.max_rel:>10.3e} "
                f"{r.atol:>9.1e}  {'yes' if r.ok else 'NO'}"
            )
        return "\n".join(lines)

    def raise_if_failed(self, what: str) -> None:
        bad = [r for r in self.rows if not r.ok]
        if bad:
            r = bad[0]
            raise AtolError(
                f"{what}: {r.backend} differs from {self.reference} by max-abs {r.max_abs:.3e} "
                f"(max-rel {r.max_rel:.3e}) > atol {r.atol:.1e} on batches {r.batches}; "
                "nothing was written. Check the model for ops that trace badly, or pass a "
                "larger --atol if the difference is acceptable"
            )


def model_batches(
    image_shape: tuple[int, int, int], num_classes: int, num_timesteps: int, seed: int = 0
) -> list[Batch]:
    """Inputs for the model graph: (1, t=0), (1, t=T-1), (7, mixed t incl. 0 and T-1)."""
    rng = np.random.default_rng(seed)
    T, K = int(num_timesteps), int(num_classes)
    specs = [(1, [0], [0]), (1, [T - 1], [K])]
    t7 = np.concatenate([[0, T - 1], rng.integers(0, T, 5)])
    y7 = np.concatenate([[K, 0, max(K - 1, 0), K], rng.integers(0, max(K, 1), 3)])
    specs.append((7, t7, y7))
    batches = []
    for b, t, y in specs:
        batch = {
            "sample": rng.standard_normal((b, *image_shape)).astype(np.float32),
            "timestep": np.asarray(t, dtype=np.int64),
        }
        if K > 0:
            batch["class_labels"] = np.asarray(y, dtype=np.int64)
        batches.append(batch)
    return batches


def torch_runner(module) -> Callable[[Batch], np.ndarray]:
    """Run a torch module (eager or TorchScript) on a batch in the spec's input order."""
    import torch

    def run(batch: Batch) -> np.ndarray:
        with torch.no_grad():
            args = [torch.from_numpy(np.ascontiguousarray(v)) for v in batch.values()]
            out = module(*args)
            out = out if isinstance(out, torch.Tensor) else out[0]
            return out.float().numpy()

    return run


def torchscript_runner(path: str | os.PathLike) -> Callable[[Batch], np.ndarray]:
    import torch

    from ddpm.export.graphs import quiet

    with quiet():  # torch.jit.load's deprecation warning
        return torch_runner(torch.jit.load(str(path), map_location="cpu"))


def pt2_runner(path: str | os.PathLike) -> Callable[[Batch], np.ndarray]:
    """Run a model.pt2 or AOTInductor package through the runtime's pt2 engine (CPU)."""
    from ddpm.runtime.engines.pt2 import Pt2Engine

    engine = Pt2Engine(Path(path))
    return lambda b: engine.run(b["sample"], b["timestep"], b.get("class_labels"))


def onnx_session(path: str | os.PathLike, spec: GraphSpec, providers=("CPUExecutionProvider",)):
    """An ORT session whose IO names and dtypes are checked against ``spec``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # ORT warns about unused initializers in tiny graphs
    sess = ort.InferenceSession(str(path), opts, providers=list(providers))
    got_in = [(i.name, i.type) for i in sess.get_inputs()]
    want_in = [(s.name, f"tensor({_ort_type(s.dtype)})") for s in spec.inputs]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != want_in or got_out != spec.output_names:
        raise ShapeError(
            f"{path}: ONNX IO {got_in} -> {got_out} does not match the spec {want_in} -> "
            f"{spec.output_names}; please report this export bug"
        )
    return sess


def _ort_type(dtype: str) -> str:
    return {"float32": "float", "float16": "float16"}.get(dtype, dtype)


def onnx_runner(path: str | os.PathLike, spec: GraphSpec) -> Callable[[Batch], np.ndarray]:
    sess = onnx_session(path, spec)
    return lambda batch: sess.run([spec.output_names[0]], batch)[0]


def compare(
    backend: str,
    run: Callable[[Batch], np.ndarray],
    refs: list[np.ndarray],
    batches: list[Batch],
    atol: float,
) -> ParityRow:
    """Run ``backend`` on every batch; ShapeError on a shape mismatch, else the worst diffs."""
    max_abs = max_rel = 0.0
    for batch, ref in zip(batches, refs, strict=True):
        try:
            out = np.asarray(run(batch))
        except ValidationError:
            raise
        except Exception as e:  # noqa: BLE001 - a backend crash is a failed validation
            raise ValidationError(
                f"{backend} failed on a batch of {len(ref)} ({first_line(e)}); nothing was written"
            ) from None
        if out.shape != ref.shape:
            raise ShapeError(
                f"{backend} returned shape {out.shape}, expected {ref.shape} (batch {len(ref)}); "
                "the batch axis may have been frozen at trace time; nothing was written"
            )
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        d = float(diff.max()) if np.isfinite(diff).all() else float("inf")
        max_abs = max(max_abs, d)
        max_rel = max(max_rel, d / max(float(np.abs(ref).max()), 1e-12))
    sizes = ",".join(str(len(r)) for r in refs)
    return ParityRow(backend, max_abs, max_rel, float(atol), sizes)
