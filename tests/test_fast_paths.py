"""CPU fast paths of issue 7: attention fusion in --optimize, --int8 export, --precision int8.

Speed itself is measured in benchmarks/bench_sampling.py, never here; these tests pin that
the fast paths are *correct*: the fused graph holds MultiHeadAttention and matches torch,
the int8 graph quantises the convolutions and still tracks the fp32 model, and the runtime
finds (or refuses with a one-line error) the int8 file.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.slow]  # ORT graph-optimization exports


@pytest.fixture(scope="module")
def unet2d_fast(exported, tmp_path_factory):
    from ddpm.export import export_checkpoint

    ex = exported("unet2d", False)
    out = tmp_path_factory.mktemp("fast")
    res = export_checkpoint(ex["ckpt"], out, formats=("onnx",), optimize=True, int8=True)
    return res


def test_optimize_fuses_diffusers_attention_into_multiheadattention(unet2d_fast):
    import onnx

    ops = [n.op_type for n in onnx.load(str(unet2d_fast.paths["optimized"])).graph.node]
    assert "MultiHeadAttention" in ops and "Softmax" not in ops
    row = next(r for rep in unet2d_fast.reports for r in rep.rows if "optimized" in r.backend)
    assert row.max_abs < 1e-4


def test_int8_export_quantises_convs_and_tracks_fp32(unet2d_fast):
    import onnx
    import onnxruntime as ort

    q = unet2d_fast.paths["int8"]
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    graph = onnx.load(str(q)).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fp32_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] not in dq_out]
    # the first conv reads the graph input, the last one writes (through its bias) the output
    assert len(fp32_convs) == 2 and fp32_convs[0].input[0] == "sample", [n.name for n in fp32_convs]
    feeds = {"sample": np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32),
             "timestep": np.array([0, 10, 500, 999], dtype=np.int64)}
    f = ort.InferenceSession(str(unet2d_fast.paths["onnx"]), providers=["CPUExecutionProvider"])
    i = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    a, b = f.run(None, feeds)[0], i.run(None, feeds)[0]
    assert np.isfinite(b).all() and np.sqrt(((a - b) ** 2).mean() / (a**2).mean()) < 0.5


def test_sampler_precision_int8_opens_the_int8_graph(unet2d_fast):
    from ddpm.runtime.sampler import Sampler

    folder = unet2d_fast.paths["onnx"].parent
    s = Sampler.from_path(folder, precision="int8")
    r = s.sample(2, steps=3)
    assert r.images.shape == (2, 8, 8, 1) and np.isfinite(r.samples).all()


def test_precision_int8_without_the_file_is_one_line_exit_2(exported):
    from ddpm.runtime.cli import main

    ex = exported("unet2d", False)
    res = CliRunner().invoke(main, ["--model", str(ex["onnx"]), "--precision", "int8", "-n", "1",
                                    "--steps", "2", "--out", "x.png"])
    assert res.exit_code == 2
    assert "ddpm-export CKPT --int8" in res.output and "Traceback" not in res.output


def test_unknown_precision_is_rejected(exported):
    from ddpm.errors import BackendError
    from ddpm.runtime.engines import resolve_file

    with pytest.raises(BackendError, match="unknown precision"):
        resolve_file(exported("unet2d", False)["onnx"], "ort", "bf16")


@pytest.mark.parametrize("groups, channels, spatial", [(8, 8, (5, 5)), (4, 8, (5, 5)), (4, 8, (25,))])
def test_groupnorm_affine_fusion_is_exact_and_shorter(tmp_path, groups, channels, spatial):
    """GroupNorm -> SiLU exported by the pinned tracer, then FuseGroupNormAffine: C == G
    becomes a lone InstanceNormalization, C > G a BatchNormalization instead of Mul + Add;
    onnxruntime output equals torch within 1e-5 either way. (N, C, L) is diffusers' attention norm."""
    import onnx
    import onnxruntime as ort
    import torch

    from ddpm.export.fuse_groupnorm import FuseGroupNormAffine

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(groups, channels)
    with torch.no_grad():  # non-trivial affine, so a dropped Mul/Add would show
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    module = torch.nn.Sequential(norm, torch.nn.SiLU()).eval()
    x = torch.randn(3, channels, *spatial)
    path = tmp_path / "gn.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    model = onnx.load(str(path))
    before = [n.op_type for n in model.graph.node]
    fuser = FuseGroupNormAffine(model)
    fused = fuser.apply()
    onnx.checker.check_model(fused)
    after = [n.op_type for n in fused.graph.node]
    assert before.count("Mul") - after.count("Mul") == 1 and "Add" not in after
    if groups == channels:
        assert fuser.fused_instance == 1 and "Reshape" not in after and "BatchNormalization" not in after
    else:
        assert fuser.fused_batchnorm == 1 and "BatchNormalization" in after
    sess = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], want, atol=1e-5, rtol=0)
