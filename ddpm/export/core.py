"""``export_checkpoint``: checkpoint -> model.onnx + model.ts (+ variants), validated, atomic.

Every file is first written to a temp path beside its final name, validated *there*, and only
then moved into place with ``os.replace`` (``ddpm._io.atomic_path``); a failed validation or
any error leaves no partial file at a final path. All graphs of one call are moved together,
after every validation has passed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ddpm._io import atomic_path, check_writable_dir
from ddpm.artifact import Contract, contract_for
from ddpm.errors import BackendError, ConfigError
from ddpm.export.sources import LoadedModel, load_source
from ddpm.export.spec import GraphSpec, model_spec
from ddpm.export.validate import ParityReport

FORMATS = ("onnx", "torchscript")
FILENAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.ts",
    "fp16": "model_fp16.onnx",
    "optimized": "model_optimized.onnx",
    "step": "model_step.onnx",
    "int8": "model_int8.onnx",
}
DEFAULT_ATOL = 1e-4


@dataclass
class ExportResult:
    """What an export wrote (final paths by kind), its contract and parity reports."""

    paths: dict[str, Path]
    contract: Contract
    reports: list[ParityReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _require_export_dependencies() -> None:
    """Fail early with the install command rather than with an ImportError mid-export."""
    import importlib.util

    missing = [m for m in ("torch", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendError(
            f"ddpm-export needs {', '.join(missing)}, which is not installed; install "
            "`pip install \"ddpm-toolkit[export,cpu]\"` (or [export,gpu] on a CUDA machine)"
        )


def versions(opset: int, exporter: str) -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    import ddpm

    return {
        "ddpm-toolkit": ddpm.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "exporter": exporter,
        "torchscript": "torch.jit.trace",
        "opset": str(opset),
    }


def model_contract(loaded: LoadedModel, spec: GraphSpec, vers: dict[str, str], **extra) -> Contract:
    return contract_for(
        arch=loaded.arch,
        model_config=loaded.model_config,
        schedule=loaded.schedule,
        image_shape=loaded.image_shape,
        num_classes=loaded.num_classes,
        inputs=list(spec.inputs),
        outputs=list(spec.outputs),
        versions=vers,
        value_range=loaded.value_range,
        **extra,
    )


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ConfigError(
            f"unknown export format(s) {bad or list(items)}; pass --format with a comma list of "
            f"{', '.join(FORMATS)}"
        )
    return out


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    formats: str | Sequence[str] = FORMATS,
    opset: int = 17,
    weights: str = "ema",
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    fp16: bool = False,
    optimize: bool = False,
    int8: bool = False,
    with_step: bool = False,
    step_sampler: str = "ddpm",
    step_count: int = 50,
    triton_repo: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``ckpt_path`` to ``out_dir`` (default: its folder); see the module docstring.

    ``formats`` picks the base graphs; ``fp16`` / ``optimize`` / ``int8`` / ``with_step`` add
    ONNX variants (they need "onnx" in ``formats``; ``int8`` quantises the optimized graph's
    convolutions); ``triton_repo`` writes a Triton Inference
    Server model repository there. Raises a ``ddpm.errors`` exception on any bad input, and
    ``AtolError`` / ``ShapeError`` (exit 1) when validation fails.
    """
    from ddpm.export import graphs

    start = time.perf_counter()
    say = log or (lambda _msg: None)
    fmts = parse_formats(formats)
    _require_export_dependencies()
    opset = graphs.check_opset(opset)
    if atol <= 0:
        raise ConfigError(f"--atol must be > 0, got {atol}")
    if (fp16 or optimize or int8 or with_step or triton_repo) and "onnx" not in fmts:
        raise ConfigError("--fp16/--optimize/--int8/--with-step/--triton-repo need the onnx format; add onnx to --format")
    src = Path(ckpt_path)
    loaded = load_source(src, weights=weights)
    out = Path(out_dir) if out_dir is not None else (src if src.is_dir() else src.parent)
    out = check_writable_dir(out, what="exported models")
    for note in loaded.notes:
        say(f"note: {note}")

    vers = versions(opset, graphs.ONNX_EXPORTER)
    spec = model_spec(*loaded.image_shape, loaded.num_classes, loaded.out_channels)
    contract = model_contract(loaded, spec, vers)
    module = graphs.io_module(loaded.module, loaded.num_classes > 0)
    args = graphs.example_inputs(loaded.image_shape, loaded.num_classes, loaded.schedule.num_train_timesteps)
    result = ExportResult(paths={}, contract=contract, notes=list(loaded.notes))

    kinds = [k for k in FORMATS if k in fmts]
    kinds += [k for k, on in (("fp16", fp16), ("optimized", optimize), ("step", with_step), ("int8", int8)) if on]
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(out / FILENAMES[k])) for k in kinds}
        if "onnx" in tmp:
            graphs.export_onnx(module, args, spec, tmp["onnx"], opset=opset, contract=contract)
            say(f"exported ONNX (opset {opset}, {graphs.ONNX_EXPORTER})")
        if "torchscript" in tmp:
            graphs.export_torchscript(module, args, tmp["torchscript"], contract=contract)
            say("exported TorchScript (torch.jit.trace)")
        if validate:
            rep = _validate_model(module, loaded, spec, tmp, atol)
            say(rep.table())
            result.reports.append(rep)
            rep.raise_if_failed("validation of the fp32 export")
        _variants(result, loaded, module, spec, tmp, vers, say, validate=validate,
                  step_sampler=step_sampler, step_count=step_count)
        if "int8" in tmp:
            _int8(result, src, loaded, module, spec, tmp, say, validate=validate)
        if triton_repo is not None:
            from ddpm.export.triton_repo import write_triton_repo

            repo = write_triton_repo(tmp["onnx"], contract, triton_repo)
            result.paths["triton_repo"] = repo
            say(f"wrote Triton model repository {repo}")
    # Leaving the ExitStack moved every temp file into place (nothing raised).
    result.paths.update({k: out / FILENAMES[k] for k in kinds})
    result.seconds = time.perf_counter() - start
    for k in kinds:
        say(f"wrote {result.paths[k]}")
    return result


def _validate_model(module, loaded: LoadedModel, spec: GraphSpec, tmp: dict, atol: float) -> ParityReport:
    from ddpm.export import validate as v

    batches = v.model_batches(loaded.image_shape, loaded.num_classes, loaded.schedule.num_train_timesteps)
    ref = v.torch_runner(module)
    refs = [ref(b) for b in batches]
    report = ParityReport(reference="torch eager fp32 (CPU)")
    if "torchscript" in tmp:
        report.rows.append(v.compare("torchscript", v.torchscript_runner(tmp["torchscript"]), refs, batches, atol))
    if "onnx" in tmp:
        report.rows.append(v.compare("onnxruntime-cpu fp32", v.onnx_runner(tmp["onnx"], spec), refs, batches, atol))
    return report


def _variants(result: ExportResult, loaded, module, spec, tmp, vers, say, *, validate, step_sampler, step_count) -> None:
    """fp16 / optimized / whole-step graphs, each built from the validated fp32 ONNX."""
    if "fp16" in tmp:
        from ddpm.export.fp16 import export_fp16

        rep = export_fp16(tmp["onnx"], tmp["fp16"], loaded, module, spec, result.contract,
                          validate=validate, say=say)
        if rep is not None:
            result.reports.append(rep)
    if "optimized" in tmp:
        from ddpm.export.optimize import export_optimized

        rep = export_optimized(tmp["onnx"], tmp["optimized"], loaded, module, spec,
                               result.contract, validate=validate, say=say)
        if rep is not None:
            result.reports.append(rep)
    if "step" in tmp:
        from ddpm.export import step_graph_v2

        # v2: table and noise are inputs, so one graph serves every sampler and step count;
        # step_sampler/step_count pick the table it is validated on (with ddim at 7 steps).
        rep = step_graph_v2.write(tmp["onnx"], tmp["step"], validate=validate, say=say,
                                  samplers=((step_sampler, step_count), ("ddim", 7)))
        if rep is not None:
            result.reports.append(rep)


def _int8(result: ExportResult, src: Path, loaded, module, spec, tmp, say, *, validate: bool) -> None:
    """model_int8.onnx: QDQ int8 convs on top of the CPU-optimized graph (attention fused)."""
    from ddpm.export.quantize import dataset_name, export_int8

    base = tmp.get("optimized")
    if base is None:
        from ddpm.export.graphs import finish_onnx
        from ddpm.export.optimize import optimize_graph

        base = tmp["int8"].with_name(tmp["int8"].name + ".fused.onnx")
        finish_onnx(optimize_graph(tmp["onnx"], "cpu"), base, result.contract)
    try:
        rep = export_int8(base, tmp["int8"], loaded, module, spec, dataset=dataset_name(src),
                          validate=validate, say=say)
    finally:
        if base is not tmp.get("optimized"):
            base.unlink(missing_ok=True)
    if rep is not None:
        result.reports.append(rep)
