"""``--fp16``: an fp16 ONNX graph (float32 IO) whose numerically fragile nodes stay fp32.

The block list is *measured*, never a per-model list of op names:

1. Run the fp32 graph on calibration inputs with every float tensor exposed (``R``).
2. Block every node that touches a value beyond fp16's safe range (|v| > 2^14, a 4x margin
   below the fp16 max 65504): its fp16 evaluation would overflow.
3. Convert the rest with ``onnxruntime.transformers.float16`` (``keep_io_types=True``), run it
   on the same inputs with the same tensors exposed (``V``), and measure each node's error
   amplification ``err(out) / max(err(in), 2^-11)`` with ``err = max|V-R| / max|R|``.
   Nodes that turn fp16 rounding of their inputs into an error above :data:`AMPLIFY`x and
   :data:`MIN_ERR` (statistics such as GroupNorm's variance, Softmax's exponent sums) are
   blocked; repeat until no node is added (at most :data:`MAX_ROUNDS` rounds).

The result is validated against fp32 torch with :data:`FP16_ATOL` (max-abs on O(1) outputs)
and over a whole 50-step DDPM trajectory that must stay free of NaN/Inf.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ddpm.errors import ValidationError
from ddpm.export.validate import ParityReport, ParityRow, compare, model_batches, torch_runner

FP16_SAFE = 2.0**14
FP16_EPS = 2.0**-11  # unit roundoff of fp16
AMPLIFY = 8.0
MIN_ERR = 4e-3
MAX_ROUNDS = 4
FP16_ATOL = 2e-2  # max-abs vs fp32 torch; fp16 carries ~3 significant digits
TRAJECTORY_STEPS = 50


def _float_values(model) -> dict[str, int]:
    """Name -> elem type of every float32/float16 tensor produced by a node."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types |= {v.name: v.type.tensor_type.elem_type for v in inferred.graph.output}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return {n: t for n, t in types.items() if t in floats}


def _run_all(model, names: list[str], feeds: list[dict]) -> list[dict[str, np.ndarray]]:
    """Run ``model`` with ``names`` added as outputs; one dict name->value per feed."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    types = _float_values(m)
    for n in names:
        if n not in have and n in types:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, types[n], None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # No graph rewrites: fused nodes would hide the intermediate tensors being measured.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    return [dict(zip(outs, sess.run(outs, f), strict=True)) for f in feeds]


def _rel_err(got: list[dict], ref: list[dict], name: str) -> float:
    err = 0.0
    for g, r in zip(got, ref, strict=True):
        if name not in g or name not in r:
            return 0.0
        a, b = g[name].astype(np.float64), r[name].astype(np.float64)
        if not np.isfinite(a).all():
            return float("inf")
        err = max(err, float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-6))
    return err


def find_block_list(model, feeds: list[dict], say: Callable[[str], None] = print) -> list[str]:
    """Names of the nodes to keep in fp32 (see the module docstring)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from ddpm.export.graphs import toposort

    nodes = [n for n in model.graph.node if n.op_type != "Constant" and n.output]
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    values = list(_float_values(model))
    ref = _run_all(model, values, feeds)
    # Inputs of the graph are cast from fp32 by keep_io_types: rounding only.
    blocked: dict[str, str] = {}
    for n in nodes:
        peak = max((float(np.abs(r[v]).max()) for r in ref for v in (*n.input, *n.output)
                    if v in r and r[v].size), default=0.0)
        if peak > FP16_SAFE:
            blocked[n.name] = f"{n.op_type} range {peak:.3g}"
    init = {i.name for i in model.graph.initializer}
    for _ in range(MAX_ROUNDS):
        m16 = toposort(
            convert_float_to_float16(model, keep_io_types=True, node_block_list=list(blocked))
        )
        got = _run_all(m16, values, feeds)
        added = 0
        for n in nodes:
            if n.name in blocked:
                continue
            outs = [o for o in n.output if o in values]
            if not outs:
                continue
            e_out = max(_rel_err(got, ref, o) for o in outs)
            e_in = max([FP16_EPS] + [_rel_err(got, ref, i) for i in n.input if i in values and i not in init])
            if e_out > MIN_ERR and e_out / e_in > AMPLIFY:
                blocked[n.name] = f"{n.op_type} err {e_in:.1e}->{e_out:.1e}"
                say(f"  fp32: {n.name} ({blocked[n.name]})")
                added += 1
        if not added:
            break
    ops = sorted({reason.split()[0] for reason in blocked.values()})
    say(f"fp16: keeping {len(blocked)} of {len(nodes)} nodes in fp32 (measured; op types {ops})")
    return list(blocked)


def convert_fp16(model_path: str | os.PathLike, feeds: list[dict], say: Callable[[str], None] = print):
    """fp16 ModelProto of the fp32 graph at ``model_path`` with a measured block list."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(model_path))
    from ddpm.export.graphs import toposort

    block = find_block_list(model, feeds, say)
    return toposort(convert_float_to_float16(model, keep_io_types=True, node_block_list=block))


def export_fp16(
    model_path, out_path, loaded, module, spec, contract, *, validate: bool = True,
    say: Callable[[str], None] = print,
) -> ParityReport | None:
    """Write ``model_fp16.onnx`` beside the fp32 graph and validate it (see module docstring)."""
    import dataclasses

    from ddpm.export.graphs import finish_onnx
    from ddpm.export.validate import onnx_runner

    T = loaded.schedule.num_train_timesteps
    calib = model_batches(loaded.image_shape, loaded.num_classes, T, seed=123)
    m16 = convert_fp16(model_path, calib, say)
    finish_onnx(m16, out_path, dataclasses.replace(contract, precision="fp16"))
    if not validate:
        return None
    batches = model_batches(loaded.image_shape, loaded.num_classes, T)
    ref = torch_runner(module)
    refs = [ref(b) for b in batches]
    run = onnx_runner(out_path, spec)
    report = ParityReport(reference="torch eager fp32 (CPU)")
    report.rows.append(compare("onnxruntime-cpu fp16", run, refs, batches, FP16_ATOL))
    report.rows.append(trajectory_row(run, loaded))
    say(report.table())
    report.raise_if_failed("validation of the fp16 graph")
    return report


def trajectory_row(run, loaded, steps: int = TRAJECTORY_STEPS) -> ParityRow:
    """Sample ``steps`` DDPM steps with the fp16 graph; fails (inf) on any NaN/Inf."""
    from ddpm.schedule import step, step_table

    table = step_table(loaded.schedule, steps)
    rng = np.random.default_rng(7)
    b, K = 4, loaded.num_classes
    x = rng.standard_normal((b, *loaded.image_shape)).astype(np.float32)
    for i in range(len(table)):
        feed = {"sample": x, "timestep": np.full((b,), table.timesteps[i], np.int64)}
        if K > 0:
            feed["class_labels"] = np.arange(b, dtype=np.int64) % (K + 1)
        out = run(feed)
        if not np.isfinite(out).all():
            raise ValidationError(
                f"fp16 graph produced NaN/Inf at step {i} of a {steps}-step DDPM trajectory "
                f"(timestep {table.timesteps[i]}); nothing was written. Export without --fp16"
            )
        x, _ = step(table, i, out, x, rng.standard_normal(x.shape).astype(np.float32))
    finite = bool(np.isfinite(x).all())
    peak = float(np.abs(x).max()) if finite else float("inf")
    # Not a parity row: max-abs is the final |x_0|, which must be finite (atol = inf).
    return ParityRow(f"fp16 {steps}-step trajectory |x0|", peak if finite else float("inf"),
                     0.0, float("inf") if finite else 0.0, str(b))
