"""Fault tests for defects whose fix lives in ``ddpm/runtime/``, ``ddpm/export/`` or
``ddpm/bench_cli.py`` (issue 13 items 3, 5, 6, 7, 10, 11, 12, 14 and the shared CLI class).

Each test states the required behaviour and is marked ``xfail(strict=True)`` with the issue
item and the file that must change: the day the fix lands, the test passes, strict xfail
turns that into a failure, and whoever lands the fix removes the marker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm import artifact
from ddpm.errors import ArtifactError, ConfigError, DDPMError, NonFiniteError

ASSET = Path(artifact.__file__).parent / "assets" / "digits.onnx"
BIN = Path(sys.executable).parent


def pending(item: str, where: str):
    return pytest.mark.xfail(strict=True, reason=f"issue 13 item {item}: fix in {where}")


def _onnx_with(tmp_path: Path, *, contract_changes=None, graph_change=None) -> Path:
    """The bundled digits model with its contract metadata and/or graph edited."""
    import onnx

    model = onnx.load(str(ASSET))
    if contract_changes:
        for prop in model.metadata_props:
            if prop.key == artifact.CONTRACT_KEY:
                d = json.loads(prop.value)
                d.update(contract_changes)
                prop.value = json.dumps(d)
    if graph_change:
        graph_change(model)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _open(path: Path, backend: str = "ort"):
    from ddpm.runtime.sampler import Sampler

    return Sampler.from_path(path, backend, "cpu", num_threads=1)


@pending("5", "ddpm/runtime/loops/host.py (check model output for NaN/Inf per batch)")
def test_nan_initializer_in_the_onnx_graph_is_an_error_not_garbage_images(tmp_path):
    from onnx import numpy_helper

    def poison(model):
        init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        arr = numpy_helper.to_array(init).copy()
        arr.reshape(-1)[0] = np.nan
        init.CopyFrom(numpy_helper.from_array(arr, init.name))

    s = _open(_onnx_with(tmp_path, graph_change=poison))
    with pytest.raises(NonFiniteError):
        s.run(s.plan(2, steps=2, labels=1))


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


@pending("6", "ddpm/runtime/engines/torchscript.py (contract image size vs the traced graph)")
def test_torchscript_whose_contract_lies_about_the_image_size_fails_at_load(tmp_path):
    import torch

    from ddpm.models.registry import build

    model = build("basic", channels=(8, 8), kernel_size=3, image_size=16).eval()
    ts = torch.jit.trace(model, (torch.zeros(1, 1, 16, 16), torch.zeros(1, dtype=torch.long)))
    d = artifact.read(ASSET).to_dict()
    d.update(arch="basic", model_config={"channels": [8, 8], "kernel_size": 3},
             image_height=64, image_width=64, num_classes=0, null_label=None,
             inputs=[s for s in d["inputs"] if s["name"] != "class_labels"])
    artifact.Contract.from_dict(d)  # the contract itself is self-consistent
    path = tmp_path / "model.ts"
    torch.jit.save(ts, str(path), _extra_files={artifact.TS_EXTRA_FILE: json.dumps(d)})
    with pytest.raises(ArtifactError, match="16"):
        _open(path, "torchscript")


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
