"""torch -> ONNX and torch -> TorchScript for the noise-predictor graph.

The ONNX exporter is pinned: the TorchScript-based tracer, ``torch.onnx.export(dynamo=False)``
(:data:`ONNX_EXPORTER`). It is fast on CPU, handles every preset and diffusers' UNet2DModel,
and its graphs are what onnxruntime's UNet fusions were written against. The choice is
recorded in the contract's ``versions["exporter"]``.

TorchScript uses ``torch.jit.trace``: the presets have no control flow on tensor values
(layers.py guarantees it), so tracing loses nothing, and a traced archive needs no Python
class of ours to load. The batch size stays dynamic because tracing records ``x.shape[0]``
as a graph value; validation runs batch 1 and 7 against a batch-2 trace to prove it.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

from ddpm.artifact import CONTRACT_KEY, TS_EXTRA_FILE, Contract
from ddpm.errors import ConfigError, ValidationError
from ddpm.export.spec import GraphSpec

ONNX_EXPORTER = "torch.onnx.export(dynamo=False) TorchScript tracer"
MIN_OPSET = 17
TRACE_BATCH = 2  # not 1: a batch-1 trace could specialise broadcasting on the batch dim


def check_opset(opset: int) -> int:
    import onnx

    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= top:
        raise ConfigError(f"opset {opset} is not supported; pass --opset between {MIN_OPSET} and {top}")
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


@contextlib.contextmanager
def quiet():
    """Silence tracer warnings (every Python int they see; the parity check is our proof),
    deprecation notices, and the ORT optimizer's logging and progress bars."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        root.setLevel(level)


def export_onnx(
    module, args: tuple, spec: GraphSpec, path: str | os.PathLike, *, opset: int, contract: Contract
) -> None:
    """Trace ``module`` to ONNX at ``path``, attach the contract, and run the full checker."""
    import onnx
    import torch

    with quiet(), torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset,
            input_names=spec.input_names, output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
        )
    model = onnx.load(str(path))
    finish_onnx(model, path, contract)


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
        first = str(e).strip().splitlines()[0]
        raise ValidationError(f"exported ONNX graph fails onnx.checker ({first}); please report this") from None
    onnx.save(model, str(path))


def set_contract(model, contract: Contract) -> None:
    """Replace any existing contract entry in ``metadata_props`` with ``contract``."""
    import onnx

    props = {p.key: p.value for p in model.metadata_props}
    props[CONTRACT_KEY] = contract.to_json()
    onnx.helper.set_model_props(model, props)  # clears, then writes every entry once
    model.producer_name = "ddpm-toolkit"


def export_torchscript(module, args: tuple, path: str | os.PathLike, *, contract: Contract) -> None:
    """Trace ``module`` and save it with the contract in ``_extra_files``."""
    import torch

    with quiet(), torch.no_grad():
        traced = torch.jit.trace(module, args, check_trace=False)
        # torch.jit.save warns it is deprecated; TorchScript is still what the issue asks for.
        torch.jit.save(traced, str(Path(path)), _extra_files={TS_EXTRA_FILE: contract.to_json()})


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
