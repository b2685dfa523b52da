"""Fault tests for defects whose fix lives in ``ddpm/export/`` (issue 13 items 1, 7, 11, 12);
the runtime's, fixed, are in tests/test_faults_runtime.py.

Each test states the required behaviour and is marked ``xfail(strict=True)`` with the issue
item and the file that must change: the day the fix lands, the test passes, strict xfail
turns that into a failure, and whoever lands the fix removes the marker.
"""

from __future__ import annotations

import json
import os

import pytest

from ddpm.errors import ConfigError


def pending(item: str, where: str):
    return pytest.mark.xfail(strict=True, reason=f"issue 13 item {item}: fix in {where}")


@pending("1", "ddpm/export/sources.py (_load_safetensors: ddpm.limits.check_types on metadata)")
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


@pending("11", "ddpm/export/core.py (atol must be finite and > 0)")
def test_export_atol_nan_is_refused_before_loading(tmp_path):
    from ddpm.export.core import export_checkpoint

    with pytest.raises(ConfigError, match="atol"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path, atol=float("nan"))


@pending("12", "ddpm/export/core.py (--step-count checked up front, named as the flag)")
def test_export_step_count_0_is_refused_up_front_naming_the_flag(tmp_path):
    from ddpm.export.core import export_checkpoint

    with pytest.raises(ConfigError, match="--step-count"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path, with_step=True, step_count=0)


@pending("7", "ddpm/export/core.py (stage every file with ddpm._io.atomic_files)")
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
