"""ddpm-export core: every preset exports to ONNX + TorchScript with the contract and parity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_CONFIGS, TINY_NUM_CLASSES

from ddpm.artifact import read

pytestmark = [pytest.mark.slow]  # exports of every preset and a real ddpm-train run

# Conditional where the preset supports it (a superset of the unconditional graph), plus the
# unconditional ddpm graph: ~1-3 s each on a busy 2-core machine.
CASES = [("basic", False), ("ddpm", False)] + [(a, True) for a in TINY_CONFIGS if a != "basic"]


def test_every_registered_preset_has_a_tiny_export_case():
    from ddpm.models import archs

    assert sorted(archs()) == sorted(TINY_CONFIGS), "add a tiny config for each new preset"


@pytest.mark.parametrize(("arch", "conditional"), CASES)
def test_preset_exports_both_formats_within_fp32_atol(arch, conditional, exported):
    paths = exported(arch, conditional)
    folder = paths["ckpt"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt.pt", "model.onnx", "model.ts"]
    result = paths.result
    (report,) = result.reports
    assert {r.backend for r in report.rows} == {"torchscript", "onnxruntime-cpu fp32"}
    for row in report.rows:
        assert row.batches == "1,1,7"
        assert row.max_abs <= 1e-4, report.table()
    c = result.contract
    assert c.arch == arch and c.num_classes == (TINY_NUM_CLASSES if conditional else 0)
    assert c.input_names == (("sample", "timestep", "class_labels") if conditional else ("sample", "timestep"))
    assert read(paths["onnx"]) == c == read(paths["torchscript"])
    assert "dynamo=True" in c.versions["exporter"], "the dynamo exporter fell back to legacy"


def test_onnx_runs_in_plain_onnxruntime_at_batch_1_and_13(exported):
    import onnx
    import onnxruntime as ort

    paths = exported("ddpm", True)
    model = onnx.load(str(paths["onnx"]))
    assert model.opset_import[0].version >= 17
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    types = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    assert types["timestep"] == ("tensor(int64)", ["batch"])
    assert types["class_labels"] == ("tensor(int64)", ["batch"])
    assert types["sample"] == ("tensor(float)", ["batch", 1, 8, 8])
    assert sess.get_outputs()[0].shape == ["batch", 1, 8, 8]
    rng = np.random.default_rng(0)
    for b in (1, 13):
        out = sess.run(None, {
            "sample": rng.standard_normal((b, 1, 8, 8)).astype(np.float32),
            "timestep": rng.integers(0, 1000, b).astype(np.int64),
            "class_labels": rng.integers(0, TINY_NUM_CLASSES + 1, b).astype(np.int64),
        })[0]
        assert out.shape == (b, 1, 8, 8) and np.isfinite(out).all()


def test_contract_is_complete_and_read_without_torch(exported):
    paths = exported("ddpm", True)
    code = (
        "import json, sys; from ddpm.artifact import read; "
        f"c = read({str(paths['onnx'])!r}); "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'onnx': 'onnx' in sys.modules, "
        "'contract': c.to_dict()}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    d = json.loads(out.stdout)
    assert d["torch"] is False and d["onnx"] is False
    c = d["contract"]
    assert c["model_config"]["base_channels"] == 8
    assert c["schedule"]["prediction_type"] == "epsilon" and c["schedule"]["variance_type"] == "fixed_small"
    assert c["schedule"]["clip_sample"] is True and len(c["betas_sha256"]) == 64
    assert (c["image_channels"], c["image_height"], c["image_width"]) == (1, 8, 8)
    assert c["value_range"] == [-1.0, 1.0]
    assert c["num_classes"] == TINY_NUM_CLASSES and c["null_label"] == TINY_NUM_CLASSES
    assert [(i["name"], i["dtype"]) for i in c["inputs"]] == [
        ("sample", "float32"), ("timestep", "int64"), ("class_labels", "int64")]
    assert set(c["versions"]) >= {"torch", "onnx", "exporter", "opset", "ddpm-toolkit"}
    assert "dynamo=True" in c["versions"]["exporter"] and c["versions"]["opset"] == "18"


def test_torchscript_loads_without_the_ddpm_package(exported, tmp_path):
    paths = exported("wang", True)
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ddpm' or name.startswith('ddpm.'):\n"
        "            raise ImportError('ddpm is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        f"m = torch.jit.load({str(paths['torchscript'])!r})\n"
        "y = m(torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 500, 999]), torch.tensor([0, 1, 2, 3, 3]))\n"
        "assert y.shape == (5, 1, 8, 8) and bool(torch.isfinite(y).all())\n"
        "print('ok', 'ddpm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok False"


def test_cli_help_is_instant_and_imports_no_torch():
    code = (
        "import sys; from click.testing import CliRunner; from ddpm.export.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); "
        "print(r.exit_code, 'torch' in sys.modules, '--with-step' in r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "True"]


def test_cli_exports_to_the_checkpoint_folder_and_prints_the_parity_table(make_checkpoint, tmp_path):
    import shutil

    from click.testing import CliRunner

    from ddpm.export.cli import main

    ckpt = tmp_path / "run" / "ckpt.pt"
    ckpt.parent.mkdir()
    shutil.copyfile(make_checkpoint("doubleconv", False), ckpt)
    r = CliRunner().invoke(main, [str(ckpt)])
    assert r.exit_code == 0, r.output
    assert (ckpt.parent / "model.onnx").is_file() and (ckpt.parent / "model.ts").is_file()
    lines = {line.split()[0]: line.split() for line in r.output.splitlines() if line.strip()}
    for backend in ("torchscript", "onnxruntime-cpu"):
        assert float(lines[backend][-4]) <= 1e-4  # max-abs column
    assert "max-abs" in r.output and "max-rel" in r.output


def test_end_to_end_through_the_real_ddpm_train_cli(tmp_path):
    """ddpm-train (tiny config, 2 steps) then ddpm-export on its ckpt.pt, both as commands."""
    import shutil
    from pathlib import Path

    def script(name: str) -> str | None:
        beside = Path(sys.executable).parent / name  # the venv's bin/, even if not on PATH
        return str(beside) if beside.is_file() else shutil.which(name)

    train, export = script("ddpm-train"), script("ddpm-export")
    assert train and export, "the package's console scripts must be installed"
    cfg = json.dumps({"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                      "attn_resolutions": [4], "num_groups": 4})
    subprocess.run([train, "--arch", "ddpm", "--image-size", "8", "--steps", "2", "--batch-size",
                    "4", "--sample-every", "0", "--num-samples", "1", "--sample-steps", "1",
                    "--model-config", cfg, "--conditional", "--out", str(tmp_path)],
                   check=True, capture_output=True)
    out = subprocess.run([export, str(tmp_path / "ckpt.pt")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines()
            if line.startswith(("torchscript", "onnxruntime-cpu"))]
    # Defaults: model.onnx, model.ts and the CPU-optimized graph, each validated.
    assert len(rows) == 3 and all(float(r[-4]) <= 1e-4 for r in rows), out.stdout
    assert (tmp_path / "model_optimized.onnx").is_file()
    assert read(tmp_path / "model_optimized.onnx").num_classes == 10
    c = read(tmp_path / "model.onnx")
    assert c.num_classes == 10 and c.null_label == 10 and (tmp_path / "model.ts").is_file()
