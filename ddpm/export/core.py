"""``export_checkpoint``: checkpoint -> model.onnx + model.ts (+ model.pt2, variants), validated, atomic.

Every file of one call is written under its final name into a hidden staging folder inside
the output folder (``ddpm._io.atomic_files``), validated *there*, and moved into place only
after every file was written and every validation passed: the export is committed as a whole
or not at all, and a failure (bad input, failed validation, a full disk, a folder in the way)
leaves the previous files in the output folder untouched and no temp file behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ddpm._io import atomic_files, check_writable_dir
from ddpm.artifact import Contract, schedule_lines
from ddpm.errors import BackendError, ConfigError
from ddpm.export.checks import (
    DEFAULT_ATOL,
    check_atol,
    check_step_args,
    refuse_folders,
    step_sampler_for,
)
from ddpm.export.contract import model_contract, versions
from ddpm.export.quantize import CalibrationLoader
from ddpm.export.sources import LoadedModel, load_source
from ddpm.export.spec import GraphSpec, model_spec
from ddpm.export.validate import ParityReport

#: Base formats: ONNX (dynamo or legacy exporter), TorchScript (torch.jit.trace) and the
#: torch.export package (torch.export.save; ``aoti`` adds the AOTInductor-compiled one).
FORMATS = ("onnx", "torchscript", "pt2")
DEFAULT_FORMATS = ("onnx", "torchscript")
FILENAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.ts",
    "pt2": "model.pt2",
    "aoti": "model_aoti.pt2",
    "fp16": "model_fp16.onnx",
    "optimized": "model_optimized.onnx",
    "step": "model_step.onnx",
    "int8": "model_int8.onnx",
}


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
    formats: str | Sequence[str] = DEFAULT_FORMATS,
    opset: int | None = None,
    onnx_exporter: str = "dynamo",
    aoti: bool = False,
    weights: str = "ema",
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    fp16: bool = False,
    optimize: bool | None = False,
    int8: bool = False,
    with_step: bool = False,
    step_sampler: str | None = None,
    step_count: int = 50,
    triton_repo: str | os.PathLike | None = None,
    calibration_loader: CalibrationLoader | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``ckpt_path`` to ``out_dir`` (default: its folder); see the module docstring.

    ``formats`` picks the base graphs; ``onnx_exporter`` ("dynamo" or "legacy", see
    graphs.py) writes the ONNX one, ``opset`` defaults to ``graphs.DEFAULT_OPSET``; ``aoti``
    adds model_aoti.pt2 (needs "pt2"); ``fp16`` / ``optimize`` / ``int8`` / ``with_step`` add
    ONNX variants (they need "onnx" in ``formats``; ``optimize=None``, the CLI default, writes
    model_optimized.onnx whenever model.onnx is written and, if the optimizer or its
    validation fails, leaves it out with a note instead of failing the export; ``int8`` quantises the optimized graph's
    convolutions, calibrated on the images ``calibration_loader`` returns for the
    checkpoint's dataset, else on noise); ``with_step``'s graph serves every sampler and is
    validated on ``step_sampler`` (default: the first of ``ddpm.schedule.SAMPLERS`` the
    model's objective allows) at ``step_count`` steps; ``triton_repo`` writes a Triton
    Inference Server model repository there. Arguments are checked before the checkpoint is
    read. Raises a ``ddpm.errors`` exception on any bad input, and ``AtolError`` /
    ``ShapeError`` (exit 1) when validation fails.
    """
    from ddpm.export import graphs

    start = time.perf_counter()
    say = log or (lambda _msg: None)
    fmts = parse_formats(formats)
    _require_export_dependencies()
    exporter = graphs.check_exporter(onnx_exporter)
    opset = graphs.check_opset(graphs.DEFAULT_OPSET if opset is None else opset, exporter)
    atol = check_atol(atol)
    if with_step:
        check_step_args(step_sampler, step_count)
    auto_optimize = optimize is None
    if auto_optimize:
        optimize = "onnx" in fmts
    if (fp16 or optimize or int8 or with_step or triton_repo) and "onnx" not in fmts:
        raise ConfigError("--fp16/--optimize/--int8/--with-step/--triton-repo need the onnx format; add onnx to --format")
    if aoti and "pt2" not in fmts:
        raise ConfigError("--aoti compiles the pt2 program; add pt2 to --format (e.g. --format onnx,pt2)")
    src = Path(ckpt_path)
    loaded = load_source(src, weights=weights)
    out = Path(out_dir) if out_dir is not None else (src if src.is_dir() else src.parent)
    out = check_writable_dir(out, what="exported models")
    if with_step:
        step_sampler = step_sampler_for(loaded, step_sampler, step_count)
    for note in loaded.notes:
        say(f"note: {note}")
    say("schedule stored in the contract:")
    for line in schedule_lines(loaded.schedule):
        say(f"  {line}")

    vers = versions(opset, graphs.EXPORTERS[exporter])
    spec = model_spec(*loaded.image_shape, loaded.num_classes, loaded.out_channels)
    contract = model_contract(loaded, spec, vers)
    module = graphs.io_module(loaded.module, loaded.num_classes > 0)
    args = graphs.example_inputs(loaded.image_shape, loaded.num_classes, loaded.schedule.num_train_timesteps)
    result = ExportResult(paths={}, contract=contract, notes=list(loaded.notes))

    kinds = [k for k in FORMATS if k in fmts] + (["aoti"] if aoti else [])
    kinds += [k for k, on in (("fp16", fp16), ("optimized", optimize), ("step", with_step), ("int8", int8)) if on]
    refuse_folders(out, [FILENAMES[k] for k in kinds])  # before minutes of export, not at the first move
    with atomic_files(out) as stage:
        tmp = {k: stage / FILENAMES[k] for k in kinds}
        program = None
        if "pt2" in tmp:  # one torch.export trace for model.pt2 and the dynamo ONNX graph
            from ddpm.export.program import export_program

            program = export_program(module, args, spec)
        if "onnx" in tmp:
            contract = graphs.export_onnx(module, args, spec, tmp["onnx"], opset=opset, contract=contract,
                                          exporter=exporter, program=program, say=say)
            result.contract = contract
            say(f"exported ONNX (opset {opset}, {contract.versions['exporter']})")
        if "torchscript" in tmp:
            for note in graphs.export_torchscript(module, args, tmp["torchscript"], contract=contract):
                say(f"note: {note}")
            say("exported TorchScript (torch.jit.trace)")
        if program is not None:
            _export_pt2(program, tmp, contract, say)
        if validate:
            rep = _validate_model(module, loaded, spec, tmp, atol)
            say(rep.table())
            result.reports.append(rep)
            rep.raise_if_failed("validation of the fp32 export")
        if _variants(result, loaded, module, spec, tmp, dict(contract.versions), say,
                     validate=validate, step_sampler=step_sampler, step_count=step_count,
                     optional_optimized=auto_optimize) is False:
            kinds.remove("optimized")
        if "int8" in tmp:
            _int8(result, src, loaded, module, spec, tmp, say, validate=validate, loader=calibration_loader)
        if triton_repo is not None:
            from ddpm.export.triton_repo import write_triton_repo

            repo = write_triton_repo(tmp["onnx"], contract, triton_repo)
            result.paths["triton_repo"] = repo
            say(f"wrote Triton model repository {repo}")
    # Leaving atomic_files moved every staged file into place (nothing raised).
    result.paths.update({k: out / FILENAMES[k] for k in kinds})
    stale = out / FILENAMES["optimized"]
    if "onnx" in kinds and "optimized" not in kinds and stale.is_file():
        # ddpm-run prefers model_optimized.onnx in a folder: one from an earlier export
        # would silently run the old weights beside the new model.onnx.
        stale.unlink()
        say(f"removed {stale} (from an earlier export; it no longer matches model.onnx)")
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
    if "pt2" in tmp:
        report.rows.append(v.compare("torch.export pt2", v.pt2_runner(tmp["pt2"]), refs, batches, atol))
    if "aoti" in tmp:
        report.rows.append(v.compare("aotinductor pt2", v.pt2_runner(tmp["aoti"]), refs, batches, atol))
    return report


def _export_pt2(program, tmp: dict, contract: Contract, say) -> None:
    """model.pt2 (+ model_aoti.pt2) from the torch.export ``program``."""
    from ddpm.export import pt2

    pt2.save_pt2(program, tmp["pt2"], contract)
    say(f"exported pt2 ({pt2.PT2_SAVER} of {contract.versions['pt2']}, dynamic batch)")
    if "aoti" in tmp:
        pt2.compile_aoti(program, tmp["aoti"], contract)
        say(f"exported AOTInductor package ({pt2.AOTI_COMPILER}, CPU)")


def _variants(result: ExportResult, loaded, module, spec, tmp, vers, say, *, validate, step_sampler,
              step_count, optional_optimized: bool = False) -> bool:
    """fp16 / optimized / whole-step graphs, each built from the validated fp32 ONNX.

    Returns False when an ``optional_optimized`` graph was left out (its failure is a note)."""
    kept = True
    if "fp16" in tmp:
        from ddpm.export.fp16 import export_fp16

        rep = export_fp16(tmp["onnx"], tmp["fp16"], loaded, module, spec, result.contract,
                          validate=validate, say=say)
        if rep is not None:
            result.reports.append(rep)
    if "optimized" in tmp:
        from ddpm.export.optimize import export_optimized

        try:
            rep = export_optimized(tmp["onnx"], tmp["optimized"], loaded, module, spec,
                                   result.contract, validate=validate, say=say)
        except Exception as e:  # noqa: BLE001 - optional by default: the export goes on without it
            if not optional_optimized:
                raise
            from ddpm.errors import first_line

            tmp.pop("optimized").unlink(missing_ok=True)
            kept, rep = False, None
            say(f"note: model_optimized.onnx left out ({first_line(e)}); ddpm-run uses "
                "model.onnx (pass --optimize to make this an error)")
        if rep is not None:
            result.reports.append(rep)
    if "step" in tmp:
        from ddpm.export import step_graph
        from ddpm.schedule import SAMPLER_OBJECTIVE, SAMPLERS

        # Table and noise are graph inputs, so one graph serves every sampler and step count;
        # it is validated on step_sampler at step_count and, at 7 steps, on another sampler
        # the objective allows (the same one when it is the only one).
        need = SAMPLER_OBJECTIVE[step_sampler]
        other = next((s for s in SAMPLERS if SAMPLER_OBJECTIVE[s] == need and s != step_sampler),
                     step_sampler)
        rep = step_graph.write(tmp["onnx"], tmp["step"], validate=validate, say=say,
                                  samplers=((step_sampler, step_count),
                                            (other, min(7, loaded.schedule.num_train_timesteps))))
        if rep is not None:
            result.reports.append(rep)
    return kept


def _int8(result: ExportResult, src: Path, loaded, module, spec, tmp, say, *, validate: bool,
          loader: CalibrationLoader | None) -> None:
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
                          loader=loader, validate=validate, say=say)
    finally:
        if base is not tmp.get("optimized"):
            base.unlink(missing_ok=True)
    if rep is not None:
        result.reports.append(rep)
