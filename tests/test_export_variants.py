"""Export variants: fp16 graph, whole-step graph, optimized graph, Triton model repository."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from conftest import TINY_NUM_CLASSES

from ddpm.artifact import read
from ddpm.schedule import step, step_table

pytestmark = [pytest.mark.slow]  # fp16/int8/optimized exports


@pytest.fixture(scope="module")
def variants(make_checkpoint, tmp_path_factory):
    """One export of the conditional ddpm preset with every variant (shared by the tests)."""
    from ddpm.export import export_checkpoint

    out = tmp_path_factory.mktemp("variants")
    result = export_checkpoint(
        make_checkpoint("ddpm", True), out, fp16=True, optimize=True, with_step=True,
        step_count=20, triton_repo=out / "triton",
    )
    return result


def _rows(result, prefix):
    return [r for rep in result.reports for r in rep.rows if r.backend.startswith(prefix)]


def test_fp16_graph_keeps_fp32_io_and_validates_with_its_tolerance(variants):
    import onnx

    from ddpm.export.fp16 import FP16_ATOL

    path = variants.paths["fp16"]
    assert path.name == "model_fp16.onnx"
    model = onnx.load(str(path))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {i.type.tensor_type.elem_type for i in model.graph.input if i.name == "sample"} == {f32}
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    assert any(t.data_type == f16 for t in model.graph.initializer), "weights must be fp16"
    (parity,) = _rows(variants, "onnxruntime-cpu fp16")
    assert parity.atol == FP16_ATOL and parity.max_abs <= FP16_ATOL
    (traj,) = _rows(variants, "fp16 50-step trajectory")
    assert np.isfinite(traj.max_abs)
    assert read(path).precision == "fp16"


def test_fp16_block_list_is_measured_from_the_graph(make_checkpoint):
    """A node made to overflow fp16 (|x| >> 65504) must be found and kept in fp32."""
    import onnx
    from onnx import TensorProto, helper

    from ddpm.export.fp16 import find_block_list

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    big = onnx.numpy_helper.from_array(np.full((1,), 1e5, np.float32), "big")
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["h"], name="scale_up"),  # values ~1e5: overflow
        helper.make_node("Div", ["h", "big"], ["h2"], name="scale_down"),
        helper.make_node("Relu", ["h2"], ["y"], name="relu"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [big]),
                              opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}]
    blocked = find_block_list(model, feeds, say=lambda _m: None)
    assert {"scale_up", "scale_down"} <= set(blocked) and "relu" not in blocked


def test_step_graph_has_no_control_flow_and_matches_numpy_step(variants):
    import onnx
    import onnxruntime as ort

    from ddpm.export.step_graph import STEP_ATOL, has_control_flow
    from ddpm.schedule import TABLE_COLUMNS

    path = variants.paths["step"]
    model = onnx.load(str(path))
    assert has_control_flow(model) == []
    assert not {n.op_type for n in model.graph.node} & {"Loop", "If", "Scan"}
    rows = _rows(variants, "step graph")
    assert {r.backend for r in rows} >= {"step graph x_prev", "step graph x0"}
    assert all(r.max_abs <= STEP_ATOL for r in rows)
    c = read(path)
    assert c.graph == "step" and c.step_graph["version"] == 2
    assert c.step_graph["table_columns"] == list(TABLE_COLUMNS)
    # Independent check on a table it was not validated on (ddim, 13 steps): guidance 0
    # with the null label (one model batch) equals schedule.step on one model call.
    table = step_table(c.schedule_config, 13, sampler="ddim")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    msess = ort.InferenceSession(str(variants.paths["onnx"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((13, 1, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((3, *x.shape)).astype(np.float32)
    i = 7
    null = np.full(13, TINY_NUM_CLASSES, np.int64)
    prev, x0, nxt = sess.run(None, {
        "x_t": x, "step": np.asarray([i], np.int64), "noise": noise,
        "table": table.as_array(np.float32), "timesteps": table.timesteps,
        "prev_x0": np.zeros_like(x), "class_labels": null, "guidance": np.zeros(1, np.float32)})
    out = msess.run(None, {"sample": x, "timestep": np.full(13, table.timesteps[i], np.int64),
                           "class_labels": null})[0]
    ref_prev, ref_x0 = step(table, i, out.astype(np.float64), x.astype(np.float64),
                            noise[i % 3].astype(np.float64))
    assert np.abs(prev - ref_prev).max() <= STEP_ATOL and np.abs(x0 - ref_x0).max() <= STEP_ATOL
    assert nxt.tolist() == [i + 1]


def test_optimized_graph_is_cpu_loadable_and_validates(variants):
    import onnx

    path = variants.paths["optimized"]
    model = onnx.load(str(path))
    from ddpm.export.optimize import CUDA_ONLY_FUSIONS

    assert "enable_group_norm" in CUDA_ONLY_FUSIONS
    assert "GroupNorm" not in {n.op_type for n in model.graph.node}
    (row,) = _rows(variants, "onnxruntime-cpu optimized")
    assert row.max_abs <= 1e-4


def _model_config_pb2():
    """Triton's official ModelConfig schema from tritonclient, loaded without grpcio."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None, "tritonclient is a dev dependency"
    path = os.path.join(os.path.dirname(spec.origin), "grpc", "model_config_pb2.py")
    mod_spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_triton_repo_config_parses_with_the_official_schema(variants):
    from google.protobuf import text_format

    repo = variants.paths["triton_repo"]
    assert (repo / "1" / "model.onnx").read_bytes() == variants.paths["onnx"].read_bytes()
    pb2 = _model_config_pb2()
    cfg = text_format.Parse((repo / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size > 0
    assert cfg.HasField("dynamic_batching")
    ins = {i.name: i for i in cfg.input}
    assert list(ins) == ["sample", "timestep", "class_labels"]
    assert ins["sample"].data_type == pb2.TYPE_FP32 and list(ins["sample"].dims) == [1, 8, 8]
    assert ins["timestep"].data_type == pb2.TYPE_INT64 and list(ins["timestep"].dims) == [1]
    assert list(ins["timestep"].reshape.shape) == []
    assert [o.name for o in cfg.output] == ["model_output"]


def test_default_cli_export_leaves_out_a_failing_optimized_graph_and_removes_a_stale_one(
        tmp_path, monkeypatch, make_checkpoint):
    """The CLI default writes model_optimized.onnx; if the optimizer fails the export still
    lands (model.onnx and model.ts), the failure is one note, and an earlier export's
    model_optimized.onnx is removed so ddpm-run cannot run stale weights; --optimize makes
    the same failure an error that writes nothing."""
    import shutil

    from click.testing import CliRunner

    from ddpm.export import optimize
    from ddpm.export.cli import main as export_cli

    ckpt = tmp_path / "ckpt.pt"
    shutil.copy(make_checkpoint("ddpm", False), ckpt)
    stale = tmp_path / "model_optimized.onnx"
    stale.write_bytes(b"an earlier export's graph")

    def broken(*a, **k):
        raise RuntimeError("fusion pass crashed")

    monkeypatch.setattr(optimize, "optimize_graph", broken)
    res = CliRunner().invoke(export_cli, [str(ckpt)])
    assert res.exit_code == 0, res.output
    assert "note: model_optimized.onnx left out (fusion pass crashed)" in res.output
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.ts").is_file()
    assert not stale.exists() and f"removed {stale}" in res.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    (tmp_path / "model.onnx").unlink()
    res = CliRunner().invoke(export_cli, [str(ckpt), "--optimize"])
    assert res.exit_code != 0 and "fusion pass crashed" in res.output
    assert not (tmp_path / "model.onnx").exists()  # all of the export or none of it
