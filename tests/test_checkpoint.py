"""ckpt.pt I/O: safe loading, clear errors for bad files, rebuild from the stored config."""

from __future__ import annotations

import pickle

import pytest
import torch

from ddpm.errors import CheckpointError, ConfigError
from ddpm.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from ddpm.schedule import ScheduleConfig

TINY = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attn_resolutions": [4], "num_groups": 4, "dropout": 0.0,
        "in_channels": 1, "out_channels": 1, "image_size": 8, "num_classes": 3}


def _ckpt(**changes) -> dict:
    from ddpm.models import build

    torch.manual_seed(0)
    model = build("ddpm", dict(TINY))
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output layers would hide a bad load
            p.add_(0.1 * torch.randn_like(p))
    ema = {k: v + 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "arch": "ddpm",
        "model_config": dict(TINY), "schedule": ScheduleConfig(num_train_timesteps=50).to_dict(),
        "data": {"dataset": "digits", "image_size": 8, "channels": 1, "num_classes": 3,
                 "class_names": ["0", "1", "2"], "value_range": [-1.0, 1.0]},
        "ema": ema, "model": model.state_dict(), "optimizer": {}, "step": 0, "rng": {},
        "train_args": {}, "losses": [1.0, 0.5], "versions": {"torch": str(torch.__version__)},
    }
    ckpt.update(changes)
    return ckpt


class Payload:
    """Unpickling this calls open(marker, "w"): it creates a file, i.e. runs code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_rebuilds_model_from_stored_config_alone(tmp_path):
    ckpt = _ckpt()
    path = save_checkpoint(tmp_path / "ckpt.pt", ckpt)
    raw = torch.load(path, weights_only=True)  # plain dict: no allow-listing needed
    assert raw["format"] == FORMAT and raw["losses"] == [1.0, 0.5]
    loaded = load_checkpoint(path)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3, 40])
    y = torch.tensor([0, 3])  # 3 = the null label
    for which in ("ema", "model"):
        model, schedule = model_from_checkpoint(loaded, weights=which)
        assert not model.training
        assert schedule == ScheduleConfig(num_train_timesteps=50)
        reference, _ = model_from_checkpoint(ckpt, weights=which)
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, y), reference(x, t, y), rtol=0, atol=0)
    ema_model, _ = model_from_checkpoint(loaded, "ema")
    raw_model, _ = model_from_checkpoint(loaded, "model")
    with torch.no_grad():  # the two weight sets really differ
        assert (ema_model(x, t, y) - raw_model(x, t, y)).abs().max() > 1e-3
    assert not list(tmp_path.glob(".ckpt.pt.*"))  # no temp file left behind


def test_pickle_that_runs_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Payload(str(marker))}, path)
    # The payload is real: a full (unsafe) unpickle would create the marker.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(str(probe))))
    assert probe.exists()

    with pytest.raises(CheckpointError, match="not a safe ddpm checkpoint") as e:
        load_checkpoint(path)
    assert "evil.pt" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a readable ddpm checkpoint"),
        (b"hello, I am a text file\n", "not a readable ddpm checkpoint"),
    ],
)
def test_non_checkpoint_bytes_are_rejected(tmp_path, content, match):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint_is_rejected_with_fix(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _ckpt())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*not a readable ddpm checkpoint.*re-run"):
        load_checkpoint(cut)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_foreign_torch_file_has_wrong_format_tag(tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a ddpm-toolkit checkpoint"):
        load_checkpoint(path)


def test_newer_format_version_and_unknown_arch(tmp_path):
    p = tmp_path / "future.pt"
    torch.save(_ckpt(format_version=FORMAT_VERSION + 1), p)
    with pytest.raises(CheckpointError, match="upgrade ddpm-toolkit"):
        load_checkpoint(p)
    p = tmp_path / "alien.pt"
    torch.save(_ckpt(arch="alien-net"), p)
    with pytest.raises(CheckpointError, match="alien.pt.*'alien-net'"):
        load_checkpoint(p)


def test_weights_that_do_not_fit_the_config(tmp_path):
    ckpt = _ckpt(model_config={**TINY, "base_channels": 16})
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="unknown weights"):
        model_from_checkpoint(_ckpt(), weights="best")
