"""torch -> ONNX and torch -> TorchScript for the noise-predictor graph.

ONNX comes from one of two exporters (:data:`EXPORTERS`), recorded in the contract's
``versions["exporter"]``:

- ``dynamo`` (the default): ``torch.onnx.export(dynamo=True)`` of the ``torch.export``
  program (:mod:`ddpm.export.program`), PyTorch's maintained path. It writes opset >= 18
  (:data:`DYNAMO_MIN_OPSET`) and runs onnxscript's optimizer, so the graph has no
  ``Constant`` nodes or shape-arithmetic chains left. If it cannot capture a model, the
  export prints one line saying why and uses the legacy exporter instead.
- ``legacy``: the TorchScript-based tracer ``torch.onnx.export(dynamo=False)``, deprecated
  in PyTorch but still shipped; chosen with ``--onnx-exporter legacy``.

Both write the same IO names and dynamic ``batch`` axis and pass the same parity check.

TorchScript uses ``torch.jit.trace``: the presets have no control flow on tensor values
(layers.py guarantees it), so tracing loses nothing, and a traced archive needs no Python
class of ours to load. The batch size stays dynamic because tracing records ``x.shape[0]``
as a graph value; validation runs batch 1 and 7 against a batch-2 trace to prove it.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from ddpm.artifact import CONTRACT_KEY, TS_EXTRA_FILE, Contract
from ddpm.errors import ConfigError, ValidationError, first_line
from ddpm.export.quiet import quiet
from ddpm.export.spec import GraphSpec

#: ``--onnx-exporter`` value -> what the contract's ``versions["exporter"]`` records.
EXPORTERS = {
    "dynamo": "torch.onnx.export(dynamo=True) from torch.export.export",
    "legacy": "torch.onnx.export(dynamo=False) TorchScript tracer",
}
DEFAULT_EXPORTER = "dynamo"
MIN_OPSET = 17
DYNAMO_MIN_OPSET = 18  # the opset onnxscript's torchlib is written for; lower needs a down-conversion
DEFAULT_OPSET = 18
TS_DEPRECATION_NOTE = (
    "TorchScript is deprecated in PyTorch: model.ts loads with torch.jit.load in this torch, "
    "but a future torch may drop it; model.pt2 (--format pt2) is its maintained successor"
)
TRACE_BATCH = 2  # not 1: a batch-1 trace could specialise broadcasting on the batch dim


def check_exporter(exporter: str) -> str:
    if exporter not in EXPORTERS:
        raise ConfigError(
            f"unknown ONNX exporter {exporter!r}; pass --onnx-exporter {' or '.join(EXPORTERS)}"
        )
    return exporter


def check_opset(opset: int, exporter: str = DEFAULT_EXPORTER) -> int:
    import onnx

    top = onnx.defs.onnx_opset_version()
    low = DYNAMO_MIN_OPSET if exporter == "dynamo" else MIN_OPSET
    if not MIN_OPSET <= int(opset) <= top:
        raise ConfigError(f"opset {opset} is not supported; pass --opset between {MIN_OPSET} and {top}")
    if int(opset) < low:
        raise ConfigError(
            f"opset {opset} is below {low}, the lowest the {exporter} ONNX exporter writes; "
            f"pass --opset {low} or higher, or --onnx-exporter legacy"
        )
    return int(opset)


def io_module(model, conditional: bool):
    """Wrap ``model(x, t, y)`` as a module whose positional inputs match the spec."""
    import torch

    class ModelIO(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, sample, timestep, class_labels=None):
            out = self.inner(sample, timestep, class_labels)
            return out if isinstance(out, torch.Tensor) else out[0]

    class UncondIO(ModelIO):
        def forward(self, sample, timestep):
            out = self.inner(sample, timestep)
            return out if isinstance(out, torch.Tensor) else out[0]

    return (ModelIO if conditional else UncondIO)(model).eval()


def example_inputs(image_shape: tuple[int, int, int], num_classes: int, num_timesteps: int):
    """Deterministic trace inputs, batch ``TRACE_BATCH``, for the model IO spec."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn((TRACE_BATCH, *image_shape), generator=g)
    t = torch.tensor([num_timesteps - 1, 0][:TRACE_BATCH], dtype=torch.int64)
    if num_classes > 0:
        return (x, t, torch.tensor([0, num_classes][:TRACE_BATCH], dtype=torch.int64))
    return (x, t)


def export_onnx(
    module, args: tuple, spec: GraphSpec, path: str | os.PathLike, *, opset: int, contract: Contract,
    exporter: str = DEFAULT_EXPORTER, program=None, say=None,
) -> Contract:
    """Export ``module`` to ONNX at ``path`` with the contract attached; returns that contract.

    ``exporter="dynamo"`` uses ``program`` (an ExportedProgram of ``module``, built here when
    None); if the dynamo exporter fails, ``say`` gets one line with the reason and the legacy
    tracer writes the graph. The returned contract's ``versions["exporter"]`` names the
    exporter that actually wrote the file.
    """
    model, used = None, "legacy"
    if exporter == "dynamo":
        try:
            model, used = _dynamo_onnx(module, args, spec, opset, program), "dynamo"
        except Exception as e:  # noqa: BLE001 - any capture failure falls back, with the reason
            if say is not None:
                say(f"note: the dynamo ONNX exporter failed ({first_line(e)}); "
                    "using the legacy TorchScript-based exporter instead")
    if model is None:
        model = _legacy_onnx(module, args, spec, path, opset)
    contract = dataclasses.replace(contract, versions={**contract.versions, "exporter": EXPORTERS[used]})
    finish_onnx(model, path, contract)
    return contract


def _dynamo_onnx(module, args: tuple, spec: GraphSpec, opset: int, program=None):
    import torch

    from ddpm.export.program import export_program

    if program is None:
        program = export_program(module, args, spec)
    with quiet(), torch.no_grad():
        onnx_program = torch.onnx.export(
            program, args, dynamo=True, opset_version=opset, input_names=spec.input_names,
            output_names=spec.output_names, optimize=True, verbose=False,
        )
    import onnx

    model = onnx_program.model_proto
    # The exporter's own value_info disagrees with the fp16 converter's retyping; ONNX shape
    # inference rebuilds it, typed for every tensor, while the graph has standard ops only
    # (the int8 calibrator picks float tensors by value_info, also behind contrib ops).
    del model.graph.value_info[:]
    # Per-node debug records (FX node, class path, Python stack trace with local file paths)
    # are most of the file's bytes and tell a user of the graph nothing.
    for node in model.graph.node:
        del node.metadata_props[:]
    del model.graph.metadata_props[:]
    return name_batch_axis(onnx.shape_inference.infer_shapes(model))


def name_batch_axis(model, name: str = "batch"):
    """Rename the symbol on the first input's axis 0 (torch's ``s0``-style name) to ``name``."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    old = dims[0].dim_param if len(dims) else ""
    if old:
        for v in (*model.graph.input, *model.graph.output):
            for d in v.type.tensor_type.shape.dim:
                if d.dim_param == old:
                    d.dim_param = name
    return model


def _legacy_onnx(module, args: tuple, spec: GraphSpec, path: str | os.PathLike, opset: int):
    import onnx
    import torch

    with quiet(), torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset,
            input_names=spec.input_names, output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
        )
    return onnx.load(str(path))


def finish_onnx(model, path: str | os.PathLike, contract: Contract) -> None:
    """Set the contract metadata, check the model (full shape inference), save it to ``path``."""
    import onnx

    set_contract(model, contract)
    domains = {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    have = {o.domain for o in model.opset_import}
    for d in sorted(domains - have):  # the UNet optimizer adds com.microsoft nodes only
        model.opset_import.append(onnx.helper.make_opsetid(d, 1))
    try:
        # Full check runs ONNX shape inference, which cannot type contrib (non-ONNX) ops.
        onnx.checker.check_model(model, full_check=not domains)
    except onnx.checker.ValidationError as e:
        raise ValidationError(f"exported ONNX graph fails onnx.checker ({first_line(e)}); please report this") from None
    onnx.save(model, str(path))


def set_contract(model, contract: Contract) -> None:
    """Replace any existing contract entry in ``metadata_props`` with ``contract``."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props[CONTRACT_KEY] = contract.to_json()
    onnx.helper.set_model_props(model, props)  # clears, then writes every entry once
    model.producer_name = "ddpm-toolkit"


def export_torchscript(module, args: tuple, path: str | os.PathLike, *, contract: Contract) -> list[str]:
    """Trace ``module`` and save it with the contract in ``_extra_files``.

    Returns the notes for the export log: :data:`TS_DEPRECATION_NOTE` when torch warned that
    TorchScript is deprecated (the warning itself is not shown; the note says what it means).
    """
    import torch

    with quiet(), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # recorded, not shown
        traced = torch.jit.trace(module, args, check_trace=False)
        torch.jit.save(traced, str(Path(path)), _extra_files={TS_EXTRA_FILE: contract.to_json()})
    deprecated = any("deprecat" in str(w.message).lower() for w in caught)
    return [TS_DEPRECATION_NOTE] if deprecated else []


def toposort(model):
    """Order nodes so each runs after its producers (graph builders and the fp16 converter
    append nodes out of order; onnx.checker and ORT require topological order)."""
    g = model.graph
    ready = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            (ordered if all(i in ready for i in n.input) else rest).append(n)
            if all(i in ready for i in n.input):
                ready.update(n.output)
        if len(rest) == len(pending):
            raise ValidationError(f"graph has unresolvable inputs at {rest[0].op_type}; please report this")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model
