"""``--int8``: static QDQ int8 quantisation of the convolutions, calibrated on training inputs.

Convolutions are >90 % of a DDPM UNet's FLOPs; onnxruntime runs ``QLinearConv`` (u8 x s8,
per-channel weights) with MLAS integer kernels, faster than its fp32 convolutions even on an
AVX2-only CPU (no VNNI; figures in ``benchmarks/results/``). MatMul/attention stay fp32: quantising them made the graph slower
here (extra Q/DQ around small GEMMs) and attention is the most range-sensitive part.
The first and the last convolution stay fp32 too (:func:`_edge_convs`, found by graph
structure): the first sees the raw noisy image, the last writes the eps prediction whose
error the sampler amplifies at small t. They are two of the cheapest convs (few channels on
one side), so keeping them costs little speed.

Calibration follows the training distribution: x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε (DDPM
eq. 4, coefficients from ``ddpm.schedule.q_sample_coefficients``) at uniformly random
timesteps and labels, with x_0 from the checkpoint's dataset when a
:data:`CalibrationLoader` is passed in and can load it offline (the ``ddpm-export`` CLI
passes one backed by ``ddpm.training``; this package never imports training code);
otherwise x_0 is uniform noise in the value range and the notes say so. Ranges: MinMax over all calibration batches. Parity with torch is
judged by the relative RMS error of the output (:data:`INT8_MAX_REL_RMS`: catches a broken
graph or a bad calibration, not quantisation noise); max-abs is printed for information.
Whether the *samples* stay good is the runtime's quality gate, which an int8 graph must
pass before it is shipped (the bundled model's is checked by tests/test_quality.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ddpm.errors import ValidationError, first_line
from ddpm.export.validate import ParityReport, compare, model_batches, onnx_runner, torch_runner

INT8_MAX_REL_RMS = 0.35  # ||int8 - fp32|| / ||fp32|| over the validation batches
# Measured on the bundled digits model (runs/bundled3): 0.013 (0.053 with the first/last conv
# quantised too); quality gate, 1 thread: unconditional confident 0.867 (fp32 0.859, needed
# 0.846; 0.844 with the edge convs quantised), guided 100 % on every label.
CALIB_SAMPLES = 256
CALIB_BATCH = 16
#: ``loader(dataset_name, (C, H, W)) -> float array (N, C, H, W)``: training images in the
#: model's value range, at the model's resolution.
CalibrationLoader = Callable[[str, tuple[int, int, int]], np.ndarray]


def dataset_name(source: str | os.PathLike) -> str | None:
    """The training dataset a ckpt.pt (or its folder) records, if any."""
    p = Path(source)
    p = p / "ckpt.pt" if p.is_dir() else p
    if p.suffix != ".pt" or not p.is_file():
        return None
    from ddpm.models.checkpoint import load_checkpoint

    return (load_checkpoint(p).get("data") or {}).get("dataset")


def calibration_images(
    loader: CalibrationLoader | None, dataset: str | None, image_shape: tuple[int, int, int],
    notes: list[str] | None = None,
) -> np.ndarray | None:
    """x_0 images from ``loader`` for ``dataset``, or None (with a note) when there are none."""
    why = ("no dataset recorded" if not dataset else "no calibration loader given") if (
        loader is None or not dataset) else None
    images = None
    if why is None:
        try:
            images = np.asarray(loader(str(dataset), tuple(image_shape)), dtype=np.float32)
            if images.ndim != 4 or images.shape[1:] != tuple(image_shape) or not len(images):
                why = f"loader returned shape {images.shape}, expected (N, {', '.join(map(str, image_shape))})"
                images = None
        except Exception as e:  # noqa: BLE001 - any dataset failure falls back to noise
            why = f"not loadable offline ({first_line(e)})"
    if images is None and notes is not None:
        notes.append(f"int8 calibration: dataset {dataset!r}: {why}; calibrated on uniform-noise x_0 instead")
    return images


def calibration_batches(loaded, images: np.ndarray | None, n: int = CALIB_SAMPLES, batch: int = CALIB_BATCH,
                        seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Model inputs at random timesteps from x_0 ``images`` (None: uniform noise); see the module docstring."""
    from ddpm.schedule import q_sample_coefficients

    rng = np.random.default_rng(seed)
    c, h, w = loaded.image_shape
    x0 = images
    if x0 is None:
        lo, hi = loaded.value_range
        x0 = rng.uniform(lo, hi, size=(n, c, h, w)).astype(np.float32)
    x0 = x0[rng.integers(0, len(x0), n)]
    a, b = q_sample_coefficients(loaded.schedule)
    t = rng.integers(0, loaded.schedule.num_train_timesteps, n)
    eps = rng.standard_normal(x0.shape)
    xt = (a[t][:, None, None, None] * x0 + b[t][:, None, None, None] * eps).astype(np.float32)
    k = loaded.num_classes
    out = []
    for s in range(0, n, batch):
        feeds = {"sample": xt[s:s + batch], "timestep": t[s:s + batch].astype(np.int64)}
        if k:
            feeds["class_labels"] = rng.integers(0, k + 1, len(feeds["timestep"])).astype(np.int64)  # K = NULL
        out.append(feeds)
    return out


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, batches) -> list[str]:
    """QDQ-quantise the Conv nodes of ``src`` into ``dst`` (contract metadata preserved).

    The first and last convolutions (:func:`_edge_convs`) stay fp32; their names are returned.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ddpm.export.graphs import quiet

    class _Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp, quiet():
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference cannot type the exporter's dynamic Reshape chains: skip it.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        # Names are looked up after pre-processing: its graph optimisation may rename or fold nodes.
        keep = _edge_convs(onnx.load(str(pre), load_external_data=False))
        quantize_static(
            str(pre), str(dst), _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"], nodes_to_exclude=keep,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
    props = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(dst))
    onnx.helper.set_model_props(model, props)
    model.producer_name = "ddpm-toolkit"
    onnx.save(model, str(dst))
    return keep


# Ops a value passes through on its way between a graph input/output and an edge conv:
# elementwise arithmetic and layout-only ops (no mixing across pixels or channels).
_PASS_THROUGH = frozenset({
    "Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
    "Add", "Sub", "Mul", "Div", "Neg", "Clip",
})


def _edge_convs(model) -> list[str]:
    """Names of the first and the last Conv of ``model``, to be kept in fp32.

    First and last layers are the most precision-sensitive of the UNet: the first sees the raw
    noisy image x_t (full value range, no normalisation before it), and the last writes the
    eps prediction, whose error the sampler amplifies at small t (x_0 = (x_t - sqrt(1-ᾱ_t)·eps)
    / sqrt(ᾱ_t)). Found by structure, not by name: the first is a Conv whose data input is a
    4-D float graph input (``sample``) reached through only :data:`_PASS_THROUGH` ops; the last
    is a Conv from which a graph output is reached the same way. Raises if either is missing
    or unnamed (``nodes_to_exclude`` matches by name).
    """
    g = model.graph
    consts = {t.name for t in g.initializer}
    consts |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def is_image(v) -> bool:
        tt = v.type.tensor_type
        return tt.elem_type == 1 and len(tt.shape.dim) == 4  # FLOAT, NCHW

    first: list = []
    todo = [v.name for v in g.input if v.name not in consts and is_image(v)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for n in consumers.get(name, []):
            if n.op_type == "Conv" and n.input[0] == name:
                first.append(n)
            elif n.op_type in _PASS_THROUGH:
                todo.extend(n.output)

    last: list = []
    todo = [v.name for v in g.output]
    seen = set()
    while todo:
        name = todo.pop()
        n = producer.get(name)
        if n is None or name in seen:
            continue
        seen.add(name)
        if n.op_type == "Conv":
            last.append(n)
        elif n.op_type in _PASS_THROUGH:
            todo.extend(i for i in n.input if i and i not in consts)

    if not first or not last:
        raise ValidationError(f"int8: could not find the {'first' if not first else 'last'} convolution "
                              "of the graph by structure; refusing to quantise it")
    names = list(dict.fromkeys(n.name for n in first + last))
    if not all(names):
        raise ValidationError("int8: an edge convolution has no node name; cannot exclude it from quantisation")
    return names


def export_int8(
    model_path, out_path, loaded, module, spec, *, dataset: str | None = None,
    loader: CalibrationLoader | None = None, validate: bool = True,
    max_rel_rms: float = INT8_MAX_REL_RMS, say: Callable[[str], None] = print,
) -> ParityReport | None:
    """Write ``model_int8.onnx`` from the (fused) fp32 graph at ``model_path``; report parity.

    ``loader`` supplies ``dataset``'s images for calibration (see :func:`calibration_images`).
    """
    notes: list[str] = []
    images = calibration_images(loader, dataset, loaded.image_shape, notes)
    batches = calibration_batches(loaded, images)
    for n in notes:
        say(f"note: {n}")
    kept = quantize_int8(model_path, out_path, batches)
    say(f"int8: Conv quantised (QDQ, per-channel s8 weights, u8 activations), "
        f"calibrated on {sum(len(b['timestep']) for b in batches)} inputs; "
        f"kept fp32: {', '.join(kept)}")
    if not validate:
        return None
    batches = model_batches(loaded.image_shape, loaded.num_classes, loaded.schedule.num_train_timesteps)
    ref = torch_runner(module)
    refs = [ref(b) for b in batches]
    report = ParityReport(reference="torch eager fp32 (CPU)")
    run = onnx_runner(out_path, spec)
    report.rows.append(compare("onnxruntime-cpu int8", run, refs, batches, float("inf")))
    err = sum(float(((run(b) - r) ** 2).sum()) for b, r in zip(batches, refs, strict=True))
    rms = (err / max(sum(float((r**2).sum()) for r in refs), 1e-30)) ** 0.5
    say(report.table())
    say(f"int8 relative RMS error vs torch fp32: {rms:.3f} (limit {max_rel_rms})")
    if not rms <= max_rel_rms:  # also catches NaN
        raise ValidationError(
            f"validation of the int8 graph: relative RMS error {rms:.3f} vs torch fp32 exceeds "
            f"{max_rel_rms}; nothing was written. The calibration data may not match the model "
            "(see the notes), or the model is too sensitive for int8: use the fp32 graph"
        )
    return report
