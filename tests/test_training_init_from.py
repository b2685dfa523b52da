"""ddpm-train --init-from: fine-tuning starts from a checkpoint's EMA weights, keeps its
network, and refuses options that would change that network, in one line."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ddpm.training.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CFG = json.dumps({"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                  "attn_resolutions": [4], "num_groups": 4})
SMALL = ["--batch-size", "4", "--sample-every", "0", "--num-samples", "1", "--sample-steps", "1",
         "--num-train-timesteps", "50", "--device", "cpu"]


def _run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3-step conditional 8x8 run: the checkpoint fine-tuning starts from."""
    out = tmp_path_factory.mktemp("source")
    torch.set_num_threads(1)
    result = _run(["--arch", "ddpm", "--image-size", "8", "--steps", "3", "--conditional",
                   "--model-config", CFG, "--prediction-type", "v_prediction", *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out / "ckpt.pt"


def test_fine_tuning_starts_from_the_ema_weights_and_keeps_the_network(tmp_path, source):
    src = torch.load(source, weights_only=True)
    out = tmp_path / "ft"
    # lr 1e-30: an Adam step moves a weight by ~1e-30, so the result must be the source's EMA
    # weights to far below float32 resolution; a run started from anything else would not be.
    # No --arch, --image-size, --conditional, --model-config or --prediction-type: all come
    # from the checkpoint.
    result = _run(["--init-from", str(source), "--steps", "2", "--lr", "1e-30", "--seed", "1",
                   "--label-dropout", "0.5", *SMALL, "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    got = torch.load(out / "ckpt.pt", weights_only=True)
    assert got["step"] == 2 and len(got["losses"]) == 2
    assert got["arch"] == src["arch"] and got["model_config"] == src["model_config"]
    assert got["schedule"]["prediction_type"] == "v_prediction" and got["data"] == src["data"]
    assert got["train_args"]["init_from"] == str(source)
    assert got["train_args"]["label_dropout"] == 0.5 and got["train_args"]["seed"] == 1
    for weights in ("model", "ema"):
        assert got[weights].keys() == src["ema"].keys()
        for k, v in src["ema"].items():
            assert torch.allclose(got[weights][k], v, rtol=0, atol=1e-20), (weights, k)


def test_a_fine_tuning_run_learns_and_resumes(tmp_path, source):
    out = tmp_path / "ft"
    first = _run(["--init-from", str(source), "--steps", "2", "--lr", "1e-3", "--warmup", "0",
                  *SMALL, "--out", str(out)])
    assert first.exit_code == 0, first.output + repr(first.exception)
    src = torch.load(source, weights_only=True)
    moved = torch.load(out / "ckpt.pt", weights_only=True)
    assert any(not torch.equal(moved["model"][k], v) for k, v in src["ema"].items())
    # Resuming a fine-tuning run continues it (the checkpoint's weights, not --init-from's).
    again = _run(["--resume", str(out / "ckpt.pt"), "--steps", "3"])
    assert again.exit_code == 0, again.output + repr(again.exception)
    resumed = torch.load(out / "ckpt.pt", weights_only=True)
    assert resumed["step"] == 3 and resumed["losses"][:2] == moved["losses"]


INIT_ERRORS = {
    "another arch": (["--arch", "basic"], "--arch differs from the --init-from checkpoint"),
    "another image size": (["--image-size", "16"], "--image-size differs"),
    "unconditional": (["--unconditional"], "--unconditional differs"),
    "another target": (["--prediction-type", "epsilon"], "--prediction-type differs"),
    "a model config": (["--model-config", CFG], "--model-config cannot change the network"),
    "with --resume": (["--resume", "{src}"], "pass only one of them"),
    "missing file": (["--init-from", "{tmp}/gone.pt"], "not found"),
    "not a checkpoint": (["--init-from", "{tmp}/notes.txt"], "not a readable ddpm checkpoint"),
}


@pytest.mark.parametrize("case", list(INIT_ERRORS))
def test_bad_init_from_is_one_line_exit_2_and_writes_nothing(tmp_path, source, case):
    args, expected = INIT_ERRORS[case]
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{src}", str(source)) for a in args]
    if "--init-from" not in args:
        args = ["--init-from", str(source), *args]
    result = _run([*args, "--steps", "2", *SMALL, "--out", str(tmp_path / "ft")])
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "ft" / "ckpt.pt").exists()


def test_data_of_another_shape_is_refused(tmp_path, source):
    from PIL import Image

    for label in ("a", "b"):  # a folder of RGB images in 2 classes: not the source's data
        (tmp_path / "rgb" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 90, 20, 200)).save(tmp_path / "rgb" / label / f"{i}.png")
    result = _run(["--init-from", str(source), "--dataset", f"folder:{tmp_path / 'rgb'}",
                   "--steps", "2", *SMALL, "--out", str(tmp_path / "ft")])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "fine-tune on data of the same shape" in result.stderr, result.stderr
