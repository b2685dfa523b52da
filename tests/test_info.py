"""``ddpm.runtime.info.describe``: what ``ddpm-run --info MODEL`` prints for each artifact kind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ddpm.errors import ArtifactError
from ddpm.runtime.info import describe


def _check_common(text: str, conditional: bool) -> None:
    assert "preset: ddpm (" in text and "base_channels=8" in text
    assert "resolution: 8x8, channels: 1" in text
    assert ("classes: 3 (null label 3" in text) if conditional else ("unconditional" in text)
    for key in ("num_train_timesteps: 1000", "beta_schedule: linear", "prediction_type: epsilon"):
        assert f"    {key}" in text, key
    assert "sampler defaults: ddpm, 50 steps" in text


def test_onnx_description_names_the_exporter_and_files_without_torch(exported):
    paths = exported("ddpm", True)
    code = ("import sys; from ddpm.runtime.info import describe; "
            f"print(describe({str(paths['onnx'])!r})); print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    text, flags = out.rsplit("\n", 2)[0], out.strip().splitlines()[-1]
    assert flags == "False False"
    _check_common(text, True)
    assert "exporter: torch.onnx.export(dynamo=True)" in text
    assert "model.onnx" in text and "(this file)" in text and "model.ts" in text and "ckpt.pt" in text


def test_torchscript_folder_and_checkpoint_descriptions(exported):
    paths = exported("ddpm", False)
    ts = describe(paths["torchscript"])
    _check_common(ts, False)
    assert "TorchScript" in ts and "exporter: torch.jit.trace" in ts
    folder = describe(paths["ckpt"].parent)  # a folder describes its model.onnx
    assert folder.splitlines()[0].endswith("model.onnx: ONNX, graph 'model', precision fp32")
    ck = describe(paths["ckpt"])
    _check_common(ck, False)
    assert "exporter: ddpm-train" in ck


def test_pt2_description(exported, tmp_path):
    from ddpm.export import export_checkpoint

    pt2 = export_checkpoint(exported("ddpm", True)["ckpt"], tmp_path, formats=("pt2",),
                            validate=False).paths["pt2"]
    text = describe(pt2)
    _check_common(text, True)
    assert "torch.export pt2" in text and "exporter: torch.export.export" in text
    assert "AOTInductor" not in text


@pytest.mark.parametrize(("name", "data", "match"), [
    ("notes.txt", b"hello", "not a ddpm artifact"),
    ("model.onnx", b"\x00\x01garbage", "not a valid ONNX file"),
    ("model.ts", b"not a zip", "TorchScript|ONNX|not"),
    ("ckpt.pt", b"not a pickle", "checkpoint|ckpt"),
])
def test_a_file_that_is_not_an_artifact_is_one_line_error(tmp_path, name, data, match):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(ArtifactError, match=match) as e:
        describe(f)
    assert "\n" not in str(e.value)


def test_missing_path_and_empty_folder_are_one_line_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        describe(tmp_path / "nope.onnx")
    with pytest.raises(ArtifactError, match="holds no ddpm model"):
        describe(tmp_path)
