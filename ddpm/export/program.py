"""``torch.export.export`` of the IO-wrapped model with a dynamic batch dimension.

One :class:`torch.export.ExportedProgram` feeds both the dynamo ONNX exporter and the
``.pt2`` package, so an export that writes both traces the model once. Dim 0 of every input
is dynamic (``Dim.AUTO``: torch infers its range); the trace batch is 2
(``graphs.TRACE_BATCH``), so torch does not specialise it to 1. Non-strict mode: the presets
are plain modules, and non-strict tracing also handles diffusers' UNet2DModel, whose Python
control flow depends on config values only.

A model may branch on the batch size. diffusers' ``Upsample2D`` calls ``.contiguous()``
from batch 64 on, so its program is valid for batch <= 63 only: :func:`batch_range` reads
that bound, the pt2 files record it (``pt2.BATCH_FILE``) and the pt2 engine splits larger
batches. ONNX graphs carry no such guard (``.contiguous()`` is a no-op there).
"""

from __future__ import annotations

from ddpm.errors import ValidationError, first_line
from ddpm.export.spec import GraphSpec


def dynamic_shapes(spec: GraphSpec) -> tuple[dict[int, object], ...]:
    """``dynamic_shapes`` for ``torch.export.export``: axis 0 of every input is dynamic."""
    import torch

    return tuple({0: torch.export.Dim.AUTO} for _ in spec.inputs)


def export_program(module, args: tuple, spec: GraphSpec):
    """The ExportedProgram of ``module`` at ``args``; ValidationError (one line) on failure."""
    import torch

    from ddpm.export.quiet import quiet

    try:
        with quiet(), torch.no_grad():
            program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes(spec), strict=False)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; the message is one line
        raise ValidationError(
            f"torch.export.export cannot capture this model with a dynamic batch ({first_line(e)}); "
            "export with --onnx-exporter legacy and --format onnx,torchscript"
        ) from None
    batch_range(program)  # raises if the batch was specialised
    return program


def batch_symbol(program):
    """The symbolic size of the first input's dim 0 (``sample``'s batch)."""
    first = next(n for n in program.graph.nodes if n.op == "placeholder"
                 and n.name not in program.graph_signature.inputs_to_parameters
                 and n.name not in program.graph_signature.inputs_to_buffers
                 and n.name not in program.graph_signature.inputs_to_lifted_tensor_constants)
    return first.meta["val"].shape[0]


def batch_range(program) -> tuple[int, int | None]:
    """(min, max) batch the program accepts; max None when unbounded."""
    import torch

    sym = batch_symbol(program)
    if not isinstance(sym, torch.SymInt):
        raise ValidationError(
            f"torch.export specialised the batch size to {sym}, so the program would accept only "
            "that batch; export with --onnx-exporter legacy and --format onnx,torchscript"
        )
    from torch.utils._sympy.numbers import int_oo

    vr = program.range_constraints.get(sym.node.expr)
    if vr is None or vr.upper is int_oo or not vr.upper.is_Integer:
        return 1, None
    return 1, (int(vr.upper) if int(vr.upper) < 2**31 else None)
