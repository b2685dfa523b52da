"""Fault tests of the runtime (issue 13): bounds before allocation, contracts checked against
the graph at load, non-finite model output, wrong-backend messages, whole-or-nothing outputs.

Each builds its bad input itself (an edited copy of the bundled model, a lying contract, an
injected ENOSPC through :data:`ddpm._io.fault_hook`) and asserts the one-line error.
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


@pytest.mark.parametrize("eta", [float("inf"), 1e300, 2.0])
def test_ddim_eta_outside_0_1_is_refused(eta):
    s = _open(ASSET)
    with pytest.raises(ConfigError, match="eta"):
        s.plan(2, steps=2, sampler="ddim", eta=eta)


def test_a_plan_of_1e9_images_is_refused_before_allocating():
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # 1e9 labels need 8 GB\n"
        "from ddpm.errors import ConfigError\n"
        "from ddpm.runtime.sampler import Sampler\n"
        "s = Sampler.from_path(None, 'ort', 'cpu', num_threads=1)\n"
        "try:\n"
        "    s.plan(10**9, steps=2)\n"
        "except ConfigError as e:\n"
        "    sys.exit(0 if 'limit' in str(e) else 3)\n"
        "sys.exit(4)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-300:])


def test_ddpm_run_never_leaves_a_grid_without_its_npz(tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from ddpm import _io
    from ddpm.runtime.cli import main

    def fail_npz(event, final):
        if final.suffix == ".npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_npz)
    out = tmp_path / "s.png"
    result = CliRunner().invoke(main, ["-n", "1", "--steps", "1", "--out", str(out),
                                       "--npz", str(tmp_path / "s.npz"), "--no-progress"])
    assert result.exit_code == 1 and not out.exists(), result.output


def test_ddpm_run_uses_the_shared_one_line_command_class():
    from ddpm._cli import OneLineCommand
    from ddpm.runtime.cli import main

    assert isinstance(main, OneLineCommand)


def test_ddpm_bench_uses_the_shared_one_line_command_class():
    from ddpm._cli import OneLineCommand
    from ddpm.bench_cli import main

    assert isinstance(main, OneLineCommand)


def test_ddpm_run_failing_midway_leaves_the_previous_outputs_as_they_were(tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from ddpm import _io
    from ddpm.runtime.cli import main

    out, npz = tmp_path / "s.png", tmp_path / "s.npz"
    out.write_bytes(b"previous grid")
    npz.write_bytes(b"previous npz")

    def fail_grid_move(event, final):  # the .npz is moved into place first, then this fails
        if event == "move" and final.suffix == ".png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_grid_move)
    result = CliRunner().invoke(main, ["-n", "1", "--steps", "1", "--out", str(out),
                                       "--npz", str(npz), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "none of" in result.output and "unchanged" in result.output
    assert out.read_bytes() == b"previous grid" and npz.read_bytes() == b"previous npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.png"]  # no temp left
