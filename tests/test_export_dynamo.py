"""The dynamo ONNX exporter: the default, its legacy fallback, and the --optimize/fp16/int8
rewrites on its graphs (whose node patterns differ from the legacy tracer's)."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from click.testing import CliRunner

from ddpm.artifact import read

pytestmark = [pytest.mark.slow]  # dynamo ONNX exports


@pytest.fixture(scope="module")
def unet2d_variants(make_checkpoint, tmp_path_factory):
    """Conditional tiny UNet2DModel (attention + GroupNorm) with every ONNX variant, dynamo."""
    import torch

    from ddpm.export import export_checkpoint

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("dynamo-variants")
        return export_checkpoint(make_checkpoint("unet2d", True), out, formats=("onnx",),
                                 optimize=True, fp16=True, int8=True)
    finally:
        torch.set_num_threads(before)


def _ops(path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_default_exporter_is_dynamo_and_recorded(unet2d_variants):
    c = unet2d_variants.contract
    assert c.versions["exporter"] == "torch.onnx.export(dynamo=True) from torch.export.export"
    assert c.versions["opset"] == "18"
    for kind in ("onnx", "optimized", "fp16", "int8"):
        assert read(unet2d_variants.paths[kind]).versions["exporter"] == c.versions["exporter"], kind


def test_optimize_fusions_fire_on_the_dynamo_graph(unet2d_variants, make_checkpoint):
    from ddpm.export.sources import load_source

    plain, fused = _ops(unet2d_variants.paths["onnx"]), _ops(unet2d_variants.paths["optimized"])
    module = load_source(make_checkpoint("unet2d", True)).module
    groupnorms = sum(type(m).__name__ == "GroupNorm" for m in module.modules())
    attentions = sum(type(m).__name__ == "Attention" for m in module.modules())
    assert attentions == plain["Softmax"] > 0
    assert fused["MultiHeadAttention"] == attentions and fused["Softmax"] == 0
    # Every GroupNorm's affine folded: one BatchNormalization (C > G) behind each InstanceNorm.
    assert fused["BatchNormalization"] + plain["BatchNormalization"] == groupnorms
    assert sum(n.startswith("onnxruntime-cpu optimized") for rep in unet2d_variants.reports
               for n in (r.backend for r in rep.rows)) == 1


def test_fp16_and_int8_validate_on_the_dynamo_graph(unet2d_variants):
    rows = {r.backend: r for rep in unet2d_variants.reports for r in rep.rows}
    assert rows["onnxruntime-cpu fp16"].ok and rows["onnxruntime-cpu optimized"].ok
    assert rows["onnxruntime-cpu int8"].max_abs < 1.0
    assert _ops(unet2d_variants.paths["int8"])["QuantizeLinear"] > 0
    assert _ops(unet2d_variants.paths["fp16"])["Cast"] > 0


def test_export_works_with_the_legacy_exporter_blocked(make_checkpoint, tmp_path, monkeypatch):
    """torch.onnx.export(dynamo=False) imports the legacy exporter's module on every call;
    None in sys.modules makes that import fail. (``import torch.onnx`` itself loads it once for
    deprecated names, so torch.onnx is imported before the block.)"""
    import torch
    import torch.onnx  # noqa: F401

    from ddpm.export import export_checkpoint

    monkeypatch.setitem(sys.modules, "torch.onnx._internal.torchscript_exporter.utils", None)
    with pytest.raises(ImportError):
        torch.onnx.export(torch.nn.Identity(), (torch.zeros(1),), str(tmp_path / "x.onnx"), dynamo=False)
    log: list[str] = []
    result = export_checkpoint(make_checkpoint("ddpm", True), tmp_path, formats=("onnx",), log=log.append)
    assert "dynamo=True" in result.contract.versions["exporter"]
    assert not any("legacy" in line for line in log), log
    assert result.reports[0].rows[0].max_abs <= 1e-4


def test_dynamo_failure_falls_back_to_legacy_with_a_one_line_reason(make_checkpoint, tmp_path, monkeypatch):
    from ddpm.export import export_checkpoint, graphs

    def broken(*_a, **_k):
        raise RuntimeError("unsupported op aten::frobnicate\nlong torch explanation")

    monkeypatch.setattr(graphs, "_dynamo_onnx", broken)
    log: list[str] = []
    result = export_checkpoint(make_checkpoint("basic", False), tmp_path, log=log.append)
    notes = [line for line in log if "dynamo ONNX exporter failed" in line]
    assert notes == ["note: the dynamo ONNX exporter failed (unsupported op aten::frobnicate); "
                     "using the legacy TorchScript-based exporter instead"]
    assert "dynamo=False" in result.contract.versions["exporter"]
    assert read(tmp_path / "model.onnx") == result.contract == read(tmp_path / "model.ts")
    assert all(r.max_abs <= 1e-4 for r in result.reports[0].rows)


def test_legacy_exporter_on_request_and_opset_rules(make_checkpoint, tmp_path):
    from ddpm.export.cli import main

    ckpt = make_checkpoint("basic", False)
    res = CliRunner().invoke(main, [str(ckpt), "-o", str(tmp_path), "--onnx-exporter", "legacy",
                                    "--opset", "17"])
    assert res.exit_code == 0, res.output
    assert "exported ONNX (opset 17, torch.onnx.export(dynamo=False) TorchScript tracer)" in res.output
    # TorchScript's deprecation warning is replaced by one line saying what it means.
    assert res.output.count("note: TorchScript is deprecated in PyTorch") == 1
    assert "Warning" not in res.output
    assert read(tmp_path / "model.onnx").versions["opset"] == "17"
    res = CliRunner().invoke(main, [str(ckpt), "-o", str(tmp_path), "--opset", "17"])
    assert res.exit_code == 2 and "--onnx-exporter legacy" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_help_documents_every_format_and_exporter():
    from ddpm.export.cli import main

    out = CliRunner().invoke(main, ["--help"], terminal_width=200).output
    for word in ("torchscript", "pt2", "torch.export", "dynamo", "legacy", "--aoti", "deprecated"):
        assert word in out, word
