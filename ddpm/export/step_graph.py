"""Whole-step graph ``model_step.onnx``: one sampler step for every sampler and step count.

The device loop (:mod:`ddpm.runtime.loops.device`) runs this graph once per step with IO
binding, so everything that changes between steps or requests is an *input*, never an
initializer: the coefficient table and its timesteps, all steps' noise, the step counter.
Built around the exported model graph with ``onnx.helper`` (no torch)::

    step (1,) int64 ──Gather──► row = table[step] (1, K) ──► x0_xt, x0_out, c_x0, c_xt,
         │                      t = timesteps[step]           c_out, sigma[, c_prev]
         ├──Mod(noise_steps)──► z = noise[step mod S]   (S = steps held by the noise buffer)
         └──+1────────────────► step_next (written into the other binding's counter)
    r = len(class_labels) / B   (1: plain conditional / unconditional, 2: CFG [y; null])
    Tile(x_t, r), t, labels ──► model (r·B) ──► (r, B, C, H, W): out = o[r-1] + g·(o[0] − o[r-1])
    x0     = Clip(x0_xt·x_t + x0_out·out, −c, c)
    x_prev = c_x0·x0 + c_xt·x_t + c_out·out [+ c_prev·prev_x0] + sigma·z

``table`` has one column per :data:`ddpm.schedule.TABLE_COLUMNS` entry, read by name, so a
sampler that adds a column (DPM-Solver++'s ``c_prev``) needs no new graph. ``prev_x0`` /
``x0`` carry a multistep sampler's state: the ``x0`` output of step i is the ``prev_x0``
input of step i+1 (zeros at step 0, whose ``c_prev`` is 0). With r = 1 the guidance line is
``o + g·0 = o`` exactly, so the loop chooses CFG or not by the labels it binds.

No Loop/If/Scan (:data:`BLOCKED_OPS`), so ORT can capture the graph in a CUDA graph. Clipping (a model property)
is baked in; dynamic thresholding (a per-sample quantile) is not expressible and stays on
the host loop. Validated at export against :func:`ddpm.schedule.step` on model.onnx outputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from ddpm.artifact import Contract, TensorSpec
from ddpm.errors import ConfigError
from ddpm.schedule import SAMPLERS, TABLE_COLUMNS, step, step_table

#: Contract ``step_graph["version"]`` of this signature (the device loop checks it).
VERSION = 2
STEP_ATOL = 1e-4  # on x_prev and x0 (both O(1)): fp32 graph arithmetic vs float64 numpy
PREFIX = "model/"
#: Control-flow ops a CUDA graph capture cannot hold; the step graph has none.
BLOCKED_OPS = ("Loop", "If", "Scan")
#: Named free dimensions; the device loop pins them per session (fixed shapes for CUDA graphs).
DIMS = {"batch": "batch", "model_batch": "model_batch", "noise_steps": "noise_steps", "steps": "steps"}


def step_io(image_shape: tuple[int, int, int], num_classes: int) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the step graph; labels and guidance only when conditional."""
    image = ("batch", *map(int, image_shape))
    inputs = [
        TensorSpec("x_t", "float32", image),
        TensorSpec("step", "int64", (1,)),
        TensorSpec("noise", "float32", ("noise_steps", *image)),
        TensorSpec("table", "float32", ("steps", len(TABLE_COLUMNS))),
        TensorSpec("timesteps", "int64", ("steps",)),
        TensorSpec("prev_x0", "float32", image),
    ]
    if num_classes > 0:
        inputs += [TensorSpec("class_labels", "int64", ("model_batch",)),
                   TensorSpec("guidance", "float32", (1,))]
    outputs = (TensorSpec("x_prev", "float32", image), TensorSpec("x0", "float32", image),
               TensorSpec("step_next", "int64", (1,)))
    return tuple(inputs), outputs


def _value_info(spec: TensorSpec):
    from onnx import TensorProto, helper

    types = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    return helper.make_tensor_value_info(spec.name, types[spec.dtype], list(spec.shape))


def build(model_onnx, contract: Contract):
    """The step ModelProto around ``model_onnx`` (the model graph of ``contract``)."""
    import onnx
    from onnx import helper, numpy_helper

    inner = onnx.compose.add_prefix(model_onnx, PREFIX)
    sched = contract.schedule_config
    C = numpy_helper.from_array
    N = helper.make_node
    i64 = lambda v, name: C(np.asarray(v, np.int64), name)  # noqa: E731
    init = [i64([-1, 1, 1, 1], "bcast_shape"), i64([1], "one"), i64([0], "zero"),
            i64([0], "axis0"), i64([1, 1, 1], "ones3")]
    nodes = [
        N("Gather", ["table", "step"], ["row"], axis=0),  # (1, K)
        N("Gather", ["timesteps", "step"], ["t1"], axis=0),  # (1,)
        N("Add", ["step", "one"], ["step_next"]),
        N("Shape", ["noise"], ["noise_shape"]),
        N("Slice", ["noise_shape", "zero", "one"], ["noise_steps"]),
        N("Mod", ["step", "noise_steps"], ["noise_idx"]),
        N("Gather", ["noise", "noise_idx"], ["z1"], axis=0),  # (1, B, C, H, W)
        N("Squeeze", ["z1", "axis0"], ["z"]),
        N("Shape", ["x_t"], ["x_shape"]),
        N("Slice", ["x_shape", "zero", "one"], ["b"]),
    ]
    for j, col in enumerate(TABLE_COLUMNS):  # by name: a new column is one more Gather
        init.append(i64(j, f"col_{col}"))
        nodes += [N("Gather", ["row", f"col_{col}"], [f"{col}_1"], axis=1),
                  N("Reshape", [f"{col}_1", "bcast_shape"], [col])]  # (1, 1, 1, 1)
    mx, mt, my, mout = (PREFIX + n for n in ("sample", "timestep", "class_labels", "model_output"))
    if contract.conditional:
        nodes += [
            N("Shape", ["class_labels"], ["mb"]),
            N("Div", ["mb", "b"], ["r"]),  # 1 or 2 model batches per sample
            N("Concat", ["r", "ones3"], ["reps"], axis=0),
            N("Tile", ["x_t", "reps"], [mx]),  # (r·B, C, H, W)
            N("Expand", ["t1", "mb"], [mt]),
            N("Identity", ["class_labels"], [my]),
            N("Concat", ["r", "x_shape"], ["pair_shape"], axis=0),
            N("Reshape", [mout, "pair_shape"], ["pair"]),  # (r, B, C, H, W)
            N("Sub", ["r", "one"], ["last"]),
            N("Gather", ["pair", "zero"], ["o_c1"], axis=0),
            N("Gather", ["pair", "last"], ["o_u1"], axis=0),
            N("Squeeze", ["o_c1", "axis0"], ["out_c"]),
            N("Squeeze", ["o_u1", "axis0"], ["out_u"]),
            # ddpm.schedule.guide's order, out_u + w·(out_c − out_u), so both loops round alike
            N("Sub", ["out_c", "out_u"], ["delta"]),
            N("Mul", ["guidance", "delta"], ["g_delta"]),
            N("Add", ["out_u", "g_delta"], ["out"]),
        ]
    else:
        nodes += [N("Identity", ["x_t"], [mx]), N("Expand", ["t1", "b"], [mt]),
                  N("Identity", [mout], ["out"])]
    nodes += [N("Mul", ["x0_xt", "x_t"], ["a1"]), N("Mul", ["x0_out", "out"], ["a2"]),
              N("Add", ["a1", "a2"], ["x0_raw"])]
    if sched.clip_sample:
        r = float(sched.clip_sample_range)
        init += [C(np.asarray(-r, np.float32), "clip_lo"), C(np.asarray(r, np.float32), "clip_hi")]
        nodes.append(N("Clip", ["x0_raw", "clip_lo", "clip_hi"], ["x0"]))
    else:
        nodes.append(N("Identity", ["x0_raw"], ["x0"]))
    # schedule.step's order: c_x0·x0 + c_xt·x_t + c_out·out, then c_prev·prev_x0, then σ·z
    terms = [("c_x0", "x0"), ("c_xt", "x_t"), ("c_out", "out")]
    if "c_prev" in TABLE_COLUMNS:
        terms.append(("c_prev", "prev_x0"))
    terms.append(("sigma", "z"))
    acc = None
    for k, (coef, x) in enumerate(terms):
        nodes.append(N("Mul", [coef, x], [f"p{k}"]))
        if acc is not None:
            nodes.append(N("Add", [acc, f"p{k}"], [f"s{k}" if k < len(terms) - 1 else "x_prev"]))
            acc = f"s{k}"
        else:
            acc = f"p{k}"
    inputs, outputs = step_io(contract.image_shape, contract.num_classes)
    graph = helper.make_graph(
        nodes + list(inner.graph.node), "ddpm_step",  # toposort puts the model in between
        [_value_info(s) for s in inputs], [_value_info(s) for s in outputs],
        initializer=list(inner.graph.initializer) + init,
    )
    model = helper.make_model(graph, opset_imports=list(model_onnx.opset_import))
    model.ir_version = model_onnx.ir_version
    from ddpm.export.graphs import toposort

    return toposort(model)


def step_contract(contract: Contract) -> Contract:
    """The model's contract with the step signature (what the device loop checks)."""
    inputs, outputs = step_io(contract.image_shape, contract.num_classes)
    info = {
        "version": VERSION,
        "table_columns": list(TABLE_COLUMNS),
        "inputs": [s.name for s in inputs],
        "outputs": [s.name for s in outputs],
        "dims": dict(DIMS),
        "samplers": "any step_table sampler without dynamic thresholding",
        "guidance": contract.conditional,
        "noise_index": "step mod noise_steps",
    }
    return dataclasses.replace(contract, graph="step", inputs=inputs, outputs=outputs, step_graph=info)


def write(
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    validate: bool = True,
    samplers: tuple[tuple[str, int], ...] = (("ddpm", 10), ("ddim", 7)),
    say: Callable[[str], None] = print,
):
    """Write the step graph of ``model_path`` (a model.onnx with its contract) to
    ``out_path`` (atomically) and, unless ``validate`` is False, check it against numpy for
    each (sampler, steps) of ``samplers``; returns the ParityReport (or None)."""
    import onnx

    from ddpm import artifact
    from ddpm._io import atomic_path
    from ddpm.export.graphs import finish_onnx

    contract = artifact.read(model_path)
    model = onnx.shape_inference.infer_shapes(build(onnx.load(str(model_path)), contract))
    with atomic_path(out_path) as tmp:
        finish_onnx(model, tmp, step_contract(contract))
        if validate:
            report = validate_step(tmp, model_path, contract, samplers)
            say(report.table())
            report.raise_if_failed("validation of the whole-step graph")
    say(f"exported whole-step graph ({len(model.graph.node)} nodes, any sampler/step count)")
    return report if validate else None


def has_control_flow(model) -> list[str]:
    """Op types among :data:`BLOCKED_OPS` present in ``model``'s main graph."""
    return sorted({n.op_type for n in model.graph.node if n.op_type in BLOCKED_OPS})


def _cpu_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _model(sess, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    feed = {"sample": x, "timestep": t} | ({} if y is None else {"class_labels": y})
    return sess.run(None, feed)[0]


def validate_step(path, model_path, contract: Contract, samplers, guidance: float = 3.0):
    """Step graph vs ``schedule.step`` (float64) on model.onnx outputs, at steps 0, N/2, N-1
    of each table, with and without CFG, B = 1 and 3; noise gathered from a 2-step buffer."""
    from ddpm.export.validate import ParityReport, ParityRow
    from ddpm.schedule import guide as combine

    sess, model = _cpu_session(path), _cpu_session(model_path)
    rng = np.random.default_rng(1)
    K, shape = contract.num_classes, contract.image_shape
    worst = {"x_prev": [0.0, 0.0], "x0": [0.0, 0.0], "step_next": [0.0, 0.0]}
    for name, n in samplers:
        if name not in SAMPLERS:  # refused, not skipped: a skipped table would read as a pass
            raise ConfigError(f"step graph validation: unknown sampler {name!r}; use one of "
                              f"{', '.join(SAMPLERS)}", field="step_sampler")
        table = step_table(contract.schedule_config, n, sampler=name)
        if table.thresholding:
            raise ConfigError(
                "step graph validation: dynamic thresholding (a per-sample quantile of x0) has "
                "no step-graph form; export without --with-step", field="with_step")
        for b, i in ((1, 0), (3, n // 2), (3, n - 1)):
            x = rng.standard_normal((b, *shape)).astype(np.float32)
            noise = rng.standard_normal((2, b, *shape)).astype(np.float32)
            px0 = np.clip(rng.standard_normal(x.shape), -1, 1).astype(np.float32)
            feed = {"x_t": x, "step": np.asarray([i], np.int64), "noise": noise,
                    "table": table.as_array(np.float32), "timesteps": table.timesteps,
                    "prev_x0": px0}
            t = np.full(b, int(table.timesteps[i]), np.int64)
            for cfg in ((False, True) if K else (False,)):
                if K:
                    y = rng.integers(0, K, b).astype(np.int64)
                    out = _model(model, x, t, y)
                    if cfg:
                        out = combine(out, _model(model, x, t, np.full(b, K, np.int64)), guidance)
                    feed |= {"class_labels": np.concatenate([y, np.full(b, K, np.int64)]) if cfg else y,
                             "guidance": np.asarray([guidance], np.float32)}
                else:
                    out = _model(model, x, t, None)
                ref_prev, ref_x0 = step(table, i, out.astype(np.float64), x.astype(np.float64),
                                        noise[i % 2].astype(np.float64), prev_x0=px0.astype(np.float64))
                got_prev, got_x0, got_next = sess.run(["x_prev", "x0", "step_next"], feed)
                for key, got, ref in (("x_prev", got_prev, ref_prev), ("x0", got_x0, ref_x0)):
                    d = float(np.abs(got - ref).max()) if np.isfinite(got).all() else float("inf")
                    rel = d / max(float(np.abs(ref).max()), 1e-12)
                    worst[key] = [max(worst[key][0], d), max(worst[key][1], rel)]
                off = float(abs(int(got_next[0]) - (i + 1)))
                worst["step_next"] = [max(worst["step_next"][0], off)] * 2
    report = ParityReport(reference="numpy schedule.step (float64) on model.onnx outputs")
    for key, (d, rel) in worst.items():
        atol = 0.0 if key == "step_next" else STEP_ATOL
        report.rows.append(ParityRow(f"step graph {key}", d, rel, atol, "1,3"))
    return report
