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


def test_int8_opens_on_ort_and_openvino_and_other_backends_are_told_which(folder):
    """int8 is a graph variant: resolved for the backends that run it, one-line error elsewhere."""
    from ddpm.errors import BackendError

    shutil.copy(default_model_path(), folder / "model_int8.onnx")
    assert resolve_file(folder, "ort", "int8") == folder / "model_int8.onnx"
    assert resolve_file(folder, "openvino", "int8") == folder / "model_int8.onnx"
    for backend in ("torchscript", "auto"):
        with pytest.raises(BackendError, match="backend 'ort' or 'openvino'") as e:
            resolve_file(folder, backend, "int8")
        assert e.value.field == "precision" and "\n" not in str(e.value)
    with pytest.raises(BackendError, match="runs on backend 'ort', got backend 'openvino'"):
        resolve_file(folder, "openvino", "fp16")
