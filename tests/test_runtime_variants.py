"""ddpm-run picks the best graph variant in a model folder and says which file it used."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from ddpm.errors import ArtifactError
from ddpm.runtime import default_model_path
from ddpm.runtime.cli import main
from ddpm.runtime.engines import resolve_file


@pytest.fixture
def folder(tmp_path):
    for name in ("model.onnx", "model_optimized.onnx", "model_fp16.onnx"):
        shutil.copy(default_model_path(), tmp_path / name)  # any valid model graph will do
    return tmp_path


def test_cpu_prefers_the_optimized_graph_cuda_and_fp16_only_when_asked(folder):
    assert resolve_file(folder, "ort") == folder / "model_optimized.onnx"
    assert resolve_file(folder, "ort", device="cuda") == folder / "model.onnx"
    assert resolve_file(folder, "ort", "fp16", "cuda") == folder / "model_fp16.onnx"
    assert resolve_file(folder / "model.onnx", "ort") == folder / "model.onnx"  # a file is kept
    (folder / "model_optimized.onnx").unlink()
    assert resolve_file(folder, "ort") == folder / "model.onnx"
    with pytest.raises(ArtifactError, match="--int8"):
        resolve_file(folder, "ort", "int8")


def test_ddpm_run_prints_the_file_it_used(folder, tmp_path):
    out = tmp_path / "s.png"
    r = CliRunner().invoke(main, ["--model", str(folder), "-n", "1", "--steps", "1", "--threads", "1",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"from {folder / 'model_optimized.onnx'}" in r.stdout
