"""Fault tests for ``ddpm-export`` (issue 13 items 1, 7, 8, 11, 12): wrong metadata types,
bad ``--atol`` / ``--step-count`` / ``--step-sampler``, and a multi-file export committed as
a whole or not at all. Arguments are refused before the checkpoint is read; folder and disk
faults leave the output folder as it was.
"""

from __future__ import annotations

import json
import os

import pytest
from faults_common import assert_one_line_error, run_cli

from ddpm.errors import ConfigError, OutputError


@pytest.mark.parametrize("key,value", [
    ("model_config", "[8, 16]"), ("data", '"digits"'),
])
def test_safetensors_metadata_of_the_wrong_type_is_one_checkpoint_error(tmp_path, key, value):
    from safetensors.torch import save_file

    from ddpm.errors import CheckpointError
    from ddpm.export.sources import load_source
    from ddpm.models.registry import build

    config = {"channels": [8, 16], "kernel_size": 3, "image_size": 8}
    model = build("basic", **config)
    meta = {"arch": "basic", "model_config": json.dumps(config),
            "schedule": json.dumps({"num_train_timesteps": 1000}),
            "data": json.dumps({"channels": 1, "image_size": 8}), key: value}
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), meta)
    with pytest.raises(CheckpointError, match=key):
        load_source(path)


@pytest.mark.parametrize("key,value,found", [
    ("schedule", '{"num_train_timesteps": "1000"}', "got str '1000'"),
    ("schedule", "[1000]", "got list"),
    ("data", '{"channels": 1, "image_size": "8"}', "got str '8'"),
])
def test_safetensors_metadata_errors_name_the_key_the_type_and_the_fix(tmp_path, key, value,
                                                                       found):
    from safetensors.torch import save_file

    from ddpm.errors import CheckpointError
    from ddpm.export.sources import load_source
    from ddpm.models.registry import build

    config = {"channels": [8, 16], "kernel_size": 3, "image_size": 8}
    meta = {"arch": "basic", "model_config": json.dumps(config), key: value}
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in build("basic", **config).state_dict().items()},
              str(path), meta)
    with pytest.raises(CheckpointError) as info:
        load_source(path)
    msg = str(info.value)
    assert "\n" not in msg and found in msg and "JSON objects" in msg, msg


def test_export_atol_nan_is_refused_before_loading(tmp_path):
    from ddpm.export.core import export_checkpoint

    with pytest.raises(ConfigError, match="atol"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path, atol=float("nan"))


@pytest.mark.parametrize("atol", [float("inf"), float("-inf"), -1e-4, 0.0, "1e-4"])
def test_export_atol_must_be_a_finite_positive_number(tmp_path, atol):
    from ddpm.export.core import export_checkpoint

    with pytest.raises(ConfigError, match="--atol must be") as info:
        export_checkpoint(tmp_path / "missing.pt", tmp_path, atol=atol)
    assert info.value.field == "atol"


def test_ddpm_export_atol_nan_is_one_line_exit_2(tmp_path):
    proc = run_cli("ddpm-export", str(tmp_path / "missing.pt"), "--atol", "nan")
    assert_one_line_error(proc, codes=(2,), contains="--atol must be a finite number > 0, got nan")


def test_export_step_count_0_is_refused_up_front_naming_the_flag(tmp_path):
    from ddpm.export.core import export_checkpoint

    with pytest.raises(ConfigError, match="--step-count"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path, with_step=True, step_count=0)


@pytest.mark.parametrize("sampler,count,match", [
    ("euler", 10, "--step-sampler 'euler' is unknown"),
    ("ddpm", 10**9, "--step-count 1000000000 is above the limit"),
    ("ddpm", 2.5, "--step-count must be an integer"),
])
def test_export_step_arguments_are_refused_before_loading(tmp_path, sampler, count, match):
    from ddpm.export.core import export_checkpoint

    with pytest.raises(ConfigError, match=match):
        export_checkpoint(tmp_path / "missing.pt", tmp_path, with_step=True,
                          step_sampler=sampler, step_count=count)


def test_export_step_sampler_the_objective_does_not_allow_names_the_ones_it_does(tmp_path):
    from conftest import write_checkpoint

    from ddpm.export.core import export_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt.pt", "basic",
                            schedule={"objective": "corrupt", "prediction_type": "sample"})
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="pass --step-sampler mix") as info:
        export_checkpoint(ckpt, out, with_step=True, step_sampler="ddim", validate=False)
    assert info.value.field == "step_sampler"
    with pytest.raises(ConfigError, match="--step-count 5000 is above the model's 1000"):
        export_checkpoint(ckpt, out, with_step=True, step_count=5000, validate=False)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow  # a full export in a subprocess
def test_export_whose_second_file_fails_leaves_no_half_export(tmp_path, monkeypatch):
    import errno

    from conftest import write_checkpoint

    from ddpm import _io
    from ddpm.export.core import export_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt.pt", "basic")
    out = tmp_path / "out"
    commits = []

    def fail_second(event, final):
        if final.parent == out:
            commits.append(final)
            if len(commits) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_second)
    with pytest.raises(OSError):
        export_checkpoint(ckpt, out, validate=False)
    assert sorted(p.name for p in out.iterdir()) == []  # all of the export, or none of it


def test_failed_export_keeps_the_previous_export_byte_for_byte(tmp_path, monkeypatch):
    import errno

    from conftest import write_checkpoint

    from ddpm import _io
    from ddpm.export.core import export_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt.pt", "basic")
    out = tmp_path / "out"
    out.mkdir()
    old = {"model.onnx": b"previous onnx", "model.ts": b"previous ts"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    moves = []

    def fail_last(event, final):
        if event == "move":
            moves.append(final.name)
            if len(moves) == 2:  # the first file is already in place: it must be put back
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_last)
    with pytest.raises(OSError):
        export_checkpoint(ckpt, out, validate=False, onnx_exporter="legacy")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old


def test_export_with_model_onnx_a_folder_fails_before_exporting_anything(tmp_path, monkeypatch):
    from conftest import write_checkpoint

    from ddpm.export import graphs
    from ddpm.export.core import export_checkpoint

    def no_export(*_a, **_k):
        raise AssertionError("a graph was exported although model.onnx is a folder")

    monkeypatch.setattr(graphs, "export_onnx", no_export)
    monkeypatch.setattr(graphs, "export_torchscript", no_export)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt", "basic")
    out = tmp_path / "out"
    (out / "model.onnx").mkdir(parents=True)
    with pytest.raises(OutputError, match="a folder is in the way") as info:
        export_checkpoint(ckpt, out, validate=False)
    assert "\n" not in str(info.value) and "model.onnx" in str(info.value)
    assert [p.name for p in out.iterdir()] == ["model.onnx"]  # no model.ts, no temp folder
