"""ddpm-export on bad input: one-line error, exit 2 (1 for failed validation), no partial file.

Also the other sources: a .safetensors file with its config in the header metadata, and a
diffusers UNet2DModel folder (the convolution article's config).
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from ddpm.export.cli import main

pytestmark = [pytest.mark.slow]  # exports of diffusers and safetensors models


def _run(args: list[str]):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def _assert_one_line_error(output: str, *words: str) -> None:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for w in words:
        assert w in errors[0], errors[0]


def _no_models(folder) -> None:
    left = sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".ts", ".tmp"))
    assert left == [], left


def test_missing_file_exits_2(tmp_path):
    code, out = _run([tmp_path / "nope.pt"])
    assert code == 2
    _assert_one_line_error(out, "not found")


def test_file_that_is_not_a_checkpoint_exits_2(tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_text("this is not a checkpoint\n")
    code, out = _run([bad])
    assert code == 2
    _assert_one_line_error(out, "ckpt.pt")
    _no_models(tmp_path)


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_whose_pickle_runs_code_is_refused_and_never_runs(tmp_path):
    import torch

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "ckpt.pt"
    torch.save({"format": "ddpm-toolkit/ckpt", "x": _Payload(str(marker))}, evil)
    code, out = _run([evil])
    assert code == 2
    _assert_one_line_error(out, "not a safe ddpm checkpoint")
    assert not marker.exists(), "the pickle payload ran"
    _no_models(tmp_path)


def test_unknown_arch_in_the_stored_config_exits_2(make_checkpoint, tmp_path):
    import torch

    ckpt = torch.load(make_checkpoint("basic"), weights_only=True)
    ckpt["arch"] = "no-such-arch"
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    code, out = _run([path])
    assert code == 2
    _assert_one_line_error(out, "no-such-arch")
    _no_models(tmp_path)


def test_weights_with_nan_exit_2_naming_the_tensor(make_checkpoint, tmp_path):
    import torch

    ckpt = torch.load(make_checkpoint("basic"), weights_only=True)
    name = next(iter(ckpt["ema"]))
    ckpt["ema"][name] = ckpt["ema"][name].clone().fill_(float("nan"))
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    code, out = _run([path])
    assert code == 2
    _assert_one_line_error(out, "NaN", name)
    _no_models(tmp_path)


def test_unwritable_output_folder_exits_2(make_checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out = _run([make_checkpoint("basic"), "-o", blocker / "sub"])
    assert code == 2
    _assert_one_line_error(out, "cannot write")


def test_failed_validation_exits_1_and_leaves_no_file(make_checkpoint, tmp_path):
    code, out = _run([make_checkpoint("basic"), "-o", tmp_path, "--atol", "1e-12"])
    assert code == 1
    _assert_one_line_error(out, "max-abs", "atol 1.0e-12")
    assert "parity vs" in out  # the table is printed before the error
    assert list(tmp_path.iterdir()) == []


def test_bad_options_exit_2(make_checkpoint, tmp_path):
    ckpt = make_checkpoint("basic")
    for args, word in (
        (["--opset", "11"], "opset 11"),
        (["--format", "tflite"], "tflite"),
        (["--format", "torchscript", "--with-step"], "onnx"),
    ):
        code, out = _run([ckpt, "-o", tmp_path, *args])
        assert code == 2, out
        _assert_one_line_error(out, word)
    assert list(tmp_path.iterdir()) == []


def test_safetensors_with_config_metadata_exports(make_checkpoint, tmp_path):
    import torch
    from safetensors.torch import save_file

    from ddpm.export import export_checkpoint

    ckpt = torch.load(make_checkpoint("doubleconv", True), weights_only=True)
    path = tmp_path / "model.safetensors"
    meta = {"arch": ckpt["arch"], "model_config": json.dumps(ckpt["model_config"])}
    save_file({k: v.contiguous() for k, v in ckpt["ema"].items()}, str(path), metadata=meta)
    notes: list[str] = []
    result = export_checkpoint(path, formats="onnx", log=notes.append)
    assert any("default ScheduleConfig" in n for n in notes)
    assert result.contract.arch == "doubleconv" and result.contract.num_classes == 3
    assert all(r.max_abs <= 1e-4 for r in result.reports[0].rows)
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / "model.ts").exists()


def test_safetensors_without_config_exits_2(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    code, out = _run([path])
    assert code == 2
    _assert_one_line_error(out, "arch", "metadata")


@pytest.fixture(scope="module")
def article_unet_folder(tmp_path_factory):
    """diffusers UNet2DModel from the convolution article's config, saved as a folder."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    folder = tmp_path_factory.mktemp("article") / "unet"
    unet.save_pretrained(str(folder))
    return folder


def test_diffusers_article_unet_folder_exports_and_validates(article_unet_folder, tmp_path):
    from ddpm.export import export_checkpoint

    folder = tmp_path / "unet"
    shutil.copytree(article_unet_folder, folder)
    (folder / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon", "clip_sample": True,
    }))
    notes: list[str] = []
    result = export_checkpoint(folder, log=notes.append)
    assert any("schedule from" in n for n in notes)
    c = result.contract
    assert c.arch == "unet2d" and c.image_shape == (1, 28, 28) and c.num_classes == 0
    assert c.schedule["beta_schedule"] == "cosine"
    assert {r.backend for r in result.reports[0].rows} == {"torchscript", "onnxruntime-cpu fp32"}
    assert all(r.max_abs <= 1e-4 for r in result.reports[0].rows), result.reports[0].table()
    assert (folder / "model.onnx").is_file() and (folder / "model.ts").is_file()
