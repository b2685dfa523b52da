"""The whole-step graph ``model_step.onnx``: one sampler step, model call included.

Built around the exported model graph with ``onnx.helper`` (no torch), so the coefficient
table is exactly ``schedule.step_table(...).as_array()`` stored as an initializer::

    step (B,) int64 ──Gather──► timesteps[step] (B,)          table (N, 6) float32
         └────────────Gather──► rows (B, 6) ──► x0_xt, x0_out, c_x0, c_xt, c_out, sigma (B,1,1,1)
    [x_t, x_t] ─┐
    [t, t]      ├─► model (2B) ──► cond, uncond ──► out = uncond + g·(cond − uncond)
    [y, null]  ─┘                                   (unconditional models: one B call)
    x0     = Clip(x0_xt·x_t + x0_out·out, −r, r)
    x_prev = c_x0·x0 + c_xt·x_t + c_out·out + sigma·noise

No Loop/If/Scan: every step runs the same node list, so ORT can capture it in a CUDA graph,
and a sampler in any ORT binding is a 10-line loop over ``step = 0..N-1``. Validated against
the numpy reference ``ddpm.schedule.step`` applied to the model graph's outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ddpm.export.graphs import toposort
from ddpm.export.spec import step_spec
from ddpm.export.validate import ParityReport, ParityRow, onnx_session
from ddpm.schedule import TABLE_COLUMNS, StepTable, step, step_table

STEP_ATOL = 1e-4  # on x_prev and x0 (both O(1)): fp32 graph arithmetic vs float64 numpy
PREFIX = "model/"
BLOCKED_OPS = ("Loop", "If", "Scan")


def _value_info(spec):
    from onnx import TensorProto, helper

    types = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    return helper.make_tensor_value_info(spec.name, types[spec.dtype], list(spec.shape))


def build_step_model(model_onnx, table: StepTable, num_classes: int, opset: int):
    """Compose the step graph around the (already exported) model graph ``model_onnx``."""
    import onnx
    from onnx import helper, numpy_helper

    inner = onnx.compose.add_prefix(model_onnx, PREFIX)
    g = inner.graph
    cond = num_classes > 0
    C = numpy_helper.from_array
    init = [
        C(table.as_array(np.float32), "step_table"),  # (N, 6) in TABLE_COLUMNS order
        C(np.asarray(table.timesteps, np.int64), "step_timesteps"),  # (N,)
        C(np.asarray([-1, 1, 1, 1], np.int64), "bcast_shape"),
        C(np.asarray(-table.clip_sample_range, np.float32), "clip_lo"),
        C(np.asarray(table.clip_sample_range, np.float32), "clip_hi"),
    ]
    nodes = [
        helper.make_node("Gather", ["step_timesteps", "step"], ["t"], axis=0),
        helper.make_node("Gather", ["step_table", "step"], ["rows"], axis=0),  # (B, 6)
    ]
    for j, col in enumerate(TABLE_COLUMNS):
        init.append(C(np.asarray(j, np.int64), f"col_{col}"))
        nodes.append(helper.make_node("Gather", ["rows", f"col_{col}"], [f"{col}_b"], axis=1))
        nodes.append(helper.make_node("Reshape", [f"{col}_b", "bcast_shape"], [col]))
    mx, mt, mout = PREFIX + "sample", PREFIX + "timestep", PREFIX + "model_output"
    if cond:
        # Classifier-free guidance in one batched call: [cond; uncond] along the batch axis.
        init.append(C(np.asarray([num_classes], np.int64), "null_label"))
        init.append(C(np.asarray([2, -1], np.int64), "split2"))
        nodes += [
            helper.make_node("Concat", ["x_t", "x_t"], [mx], axis=0),
            helper.make_node("Concat", ["t", "t"], [mt], axis=0),
            helper.make_node("Expand", ["null_label", "t_shape"], ["y_null"]),
            helper.make_node("Shape", ["t"], ["t_shape"]),
            helper.make_node("Concat", ["class_labels", "y_null"], [PREFIX + "class_labels"], axis=0),
        ]
        post = [
            helper.make_node("Shape", ["x_t"], ["x_shape"]),
            helper.make_node("Concat", ["split2", "chw"], ["pair_shape"], axis=0),
            helper.make_node("Slice", ["x_shape", "one", "four"], ["chw"]),
            helper.make_node("Reshape", [mout, "pair_shape"], ["pair"]),  # (2, B, C, H, W)
            helper.make_node("Gather", ["pair", "zero_s"], ["out_cond"], axis=0),
            helper.make_node("Gather", ["pair", "one_s"], ["out_uncond"], axis=0),
            helper.make_node("Sub", ["out_cond", "out_uncond"], ["delta"]),
            helper.make_node("Mul", ["guidance", "delta"], ["g_delta"]),
            helper.make_node("Add", ["out_uncond", "g_delta"], ["out"]),
        ]
        init += [C(np.asarray([1], np.int64), "one"), C(np.asarray([4], np.int64), "four"),
                 C(np.asarray(0, np.int64), "zero_s"), C(np.asarray(1, np.int64), "one_s")]
    else:
        nodes += [
            helper.make_node("Identity", ["x_t"], [mx]),
            helper.make_node("Identity", ["t"], [mt]),
        ]
        post = [helper.make_node("Identity", [mout], ["out"])]
    x0 = [
        helper.make_node("Mul", ["x0_xt", "x_t"], ["a1"]),
        helper.make_node("Mul", ["x0_out", "out"], ["a2"]),
        helper.make_node("Add", ["a1", "a2"], ["x0_raw"]),
    ]
    if table.clip_sample:
        x0.append(helper.make_node("Clip", ["x0_raw", "clip_lo", "clip_hi"], ["x0"]))
    else:
        x0.append(helper.make_node("Identity", ["x0_raw"], ["x0"]))
    prev = [
        helper.make_node("Mul", ["c_x0", "x0"], ["p1"]),
        helper.make_node("Mul", ["c_xt", "x_t"], ["p2"]),
        helper.make_node("Mul", ["c_out", "out"], ["p3"]),
        helper.make_node("Mul", ["sigma", "noise"], ["p4"]),
        helper.make_node("Add", ["p1", "p2"], ["s1"]),
        helper.make_node("Add", ["s1", "p3"], ["s2"]),
        helper.make_node("Add", ["s2", "p4"], ["x_prev"]),
    ]
    spec = step_spec(*_image_chw(model_onnx), num_classes)
    graph = helper.make_graph(
        nodes + list(g.node) + post + x0 + prev, "ddpm_step",
        [_value_info(s) for s in spec.inputs], [_value_info(s) for s in spec.outputs],
        initializer=list(g.initializer) + init,
    )
    model = helper.make_model(graph, opset_imports=list(model_onnx.opset_import))
    model.ir_version = model_onnx.ir_version
    return onnx.shape_inference.infer_shapes(toposort(model)), spec


def _image_chw(model_onnx) -> tuple[int, int, int]:
    dims = model_onnx.graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:4])


def export_step(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    loaded,
    vers: dict[str, str],
    *,
    sampler: str = "ddpm",
    num_steps: int = 50,
    validate: bool = True,
    say: Callable[[str], None] = print,
) -> ParityReport | None:
    """Write the step graph for ``sampler``/``num_steps`` and validate it against numpy."""
    import onnx

    from ddpm.export.contract import model_contract
    from ddpm.export.graphs import finish_onnx

    table = step_table(loaded.schedule, num_steps, sampler=sampler)
    model, spec = build_step_model(onnx.load(str(model_path)), table, loaded.num_classes,
                                   int(vers["opset"]))
    step_info = {
        "sampler": sampler, "num_inference_steps": int(num_steps), "spacing": "leading",
        "eta": 0.0, "table_columns": list(TABLE_COLUMNS),
        "timesteps": [int(t) for t in table.timesteps],
        "guidance": loaded.num_classes > 0,
    }
    contract = model_contract(loaded, spec, vers, graph="step", step_graph=step_info)
    finish_onnx(model, out_path, contract)
    say(f"exported whole-step graph ({sampler}, N={num_steps}, {len(model.graph.node)} nodes)")
    if not validate:
        return None
    report = validate_step(out_path, spec, model_path, loaded, table)
    say(report.table())
    report.raise_if_failed("validation of the whole-step graph")
    return report


def validate_step(
    path, spec, model_path, loaded, table: StepTable, guidance: float = 3.0
) -> ParityReport:
    """Graph vs ``schedule.step`` (float64) at steps 0, N/2 and N-1.

    The model outputs fed to ``step`` come from the already validated ``model.onnx`` on ORT,
    so this isolates the step math: at step 0 the x0 coefficients reach 1/sqrt(ᾱ_T) ≈ 150,
    and feeding torch outputs instead would only re-measure the model's 1e-6 parity ×150.
    """
    from ddpm.export.spec import model_spec

    sess = onnx_session(path, spec)
    mspec = model_spec(*loaded.image_shape, loaded.num_classes, loaded.out_channels)
    model = onnx_session(model_path, mspec)
    rng = np.random.default_rng(1)
    K, N = loaded.num_classes, len(table)
    worst = {"x_prev": [0.0, 0.0], "x0": [0.0, 0.0]}
    sizes = []
    for b, i in ((1, 0), (7, N // 2), (7, N - 1)):
        x = rng.standard_normal((b, *loaded.image_shape)).astype(np.float32)
        z = rng.standard_normal(x.shape).astype(np.float32)
        t = np.full((b,), int(table.timesteps[i]), dtype=np.int64)
        feed = {"x_t": x, "step": np.full((b,), i, np.int64), "noise": z}
        if K > 0:
            y = rng.integers(0, K + 1, b).astype(np.int64)
            feed |= {"class_labels": y, "guidance": np.asarray([guidance], np.float32)}
            null = np.full((b,), K, np.int64)
            c, u = (
                model.run(None, {"sample": x, "timestep": t, "class_labels": labels})[0].astype(np.float64)
                for labels in (y, null)
            )
            out = u + guidance * (c - u)
        else:
            out = model.run(None, {"sample": x, "timestep": t})[0].astype(np.float64)
        ref_prev, ref_x0 = step(table, i, out, x.astype(np.float64), z.astype(np.float64))
        got_prev, got_x0 = sess.run(["x_prev", "x0"], feed)
        for name, got, ref in (("x_prev", got_prev, ref_prev), ("x0", got_x0, ref_x0)):
            d = float(np.abs(got - ref).max()) if np.isfinite(got).all() else float("inf")
            worst[name][0] = max(worst[name][0], d)
            worst[name][1] = max(worst[name][1], d / max(float(np.abs(ref).max()), 1e-12))
        sizes.append(str(b))
    report = ParityReport(reference="numpy schedule.step (float64) on model.onnx outputs")
    for name, (a, r) in worst.items():
        report.rows.append(ParityRow(f"step graph {name}", a, r, STEP_ATOL, ",".join(sizes)))
    return report


def has_control_flow(model) -> list[str]:
    """Op types among Loop/If/Scan present in ``model``'s main graph."""
    return sorted({n.op_type for n in model.graph.node if n.op_type in BLOCKED_OPS})
