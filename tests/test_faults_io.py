"""Writes under faults: ENOSPC mid-write (a real 1 MiB tmpfs and the ``DDPM_FAULT_ENOSPC`` /
``fault_hook`` seam of ``ddpm._io``), a folder in the way, multi-file commits that are all or
nothing; the previous good output is always left untouched and no temp file survives.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from faults_common import assert_one_line_error, mount_tmpfs, no_temp_files, run_cli, unmount

from ddpm import _io
from ddpm._cli import describe
from ddpm.errors import OutputError


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    final = tmp_path / "model.onnx"
    final.write_bytes(b"previous good output")
    with pytest.raises(RuntimeError), _io.atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("serializer died")
    assert final.read_bytes() == b"previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_fault_seam_env_fails_the_nth_commit_with_enospc(tmp_path, monkeypatch):
    final = tmp_path / "a.bin"
    final.write_bytes(b"old")
    monkeypatch.setenv(_io.FAULT_ENV, f"{_io._commits + 2}")
    _io.atomic_write_bytes(tmp_path / "first.bin", b"ok")  # commit n-1 succeeds
    with pytest.raises(OSError) as e:
        _io.atomic_write_bytes(final, b"new")
    assert e.value.errno == errno.ENOSPC
    assert final.read_bytes() == b"old" and not no_temp_files(tmp_path)
    assert describe(e.value)[1] == 1 and "free disk space" in describe(e.value)[0]


def test_atomic_files_commits_all_or_restores_everything(tmp_path, monkeypatch):
    (tmp_path / "model.ts").write_bytes(b"old ts")
    with _io.atomic_files(tmp_path) as stage:
        (stage / "model.ts").write_bytes(b"new ts")
        (stage / "model.onnx").write_bytes(b"new onnx")
    assert (tmp_path / "model.ts").read_bytes() == b"new ts"

    def fail_second(event, final):
        if final.name == "model.ts":
            raise OSError(errno.ENOSPC, "No space left on device", str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_second)
    with pytest.raises(OSError), _io.atomic_files(tmp_path) as stage:
        (stage / "model.onnx").write_bytes(b"newer onnx")  # moved first, then rolled back
        (stage / "model.ts").write_bytes(b"newer ts")
    assert (tmp_path / "model.onnx").read_bytes() == b"new onnx"
    assert (tmp_path / "model.ts").read_bytes() == b"new ts"
    assert not no_temp_files(tmp_path)


def test_atomic_files_refuses_a_folder_in_the_way_before_moving_anything(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    (tmp_path / "model.ts").write_bytes(b"old ts")
    with pytest.raises(OutputError, match="a folder is in the way"), \
            _io.atomic_files(tmp_path) as stage:
        (stage / "model.ts").write_bytes(b"new ts")
        (stage / "model.onnx").write_bytes(b"new onnx")
    assert (tmp_path / "model.ts").read_bytes() == b"old ts"
    assert not no_temp_files(tmp_path)
    with pytest.raises(OutputError, match="a folder is in the way"), \
            _io.atomic_path(tmp_path / "model.onnx"):
        pass


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk (skipped, with the reason, where mount is refused)."""
    mnt = tmp_path / "tiny"
    mount_tmpfs(mnt, "size=1m")
    try:
        yield mnt
    finally:
        unmount(mnt)


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    from conftest import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("good") / "ckpt.pt", "basic")


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_file(full_disk):
    import torch

    from ddpm.models.checkpoint import FORMAT, save_checkpoint

    final = full_disk / "ckpt.pt"
    save_checkpoint(final, {"format": FORMAT, "w": torch.zeros(1000)})
    before = final.read_bytes()
    with pytest.raises(OutputError) as e:
        save_checkpoint(final, {"format": FORMAT, "w": torch.zeros(1 << 19)})  # 2 MiB
    assert e.value.exit_code == 1 and "\n" not in str(e.value)
    assert "previous checkpoint there, if any, is unchanged" in str(e.value)
    assert final.read_bytes() == before
    assert sorted(p.name for p in full_disk.iterdir()) == ["ckpt.pt"]


def test_ddpm_run_on_a_full_disk_is_one_line_and_keeps_the_previous_grid(full_disk):
    grid = full_disk / "samples.png"
    grid.write_bytes(b"previous grid")
    (full_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 8192))  # leave ~8 KiB
    proc = run_cli("ddpm-run", "-n", "64", "--steps", "2", "--scale", "8", "--out", str(grid),
                   "--no-progress")
    assert_one_line_error(proc, codes=(1,), contains="No space left on device")
    assert grid.read_bytes() == b"previous grid"
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "samples.png"]


@pytest.mark.slow  # a full export in a subprocess
def test_ddpm_export_on_a_full_disk_is_one_line_and_leaves_nothing(good_ckpt, full_disk):
    (full_disk / "filler").write_bytes(b"\0" * ((1 << 20) - 8192))  # ~8 KiB left
    proc = run_cli("ddpm-export", str(good_ckpt), "--out", str(full_disk), "--no-validate")
    assert_one_line_error(proc, codes=(1,), contains="No space left on device")
    assert [p.name for p in full_disk.iterdir()] == ["filler"]


def test_ddpm_export_with_a_folder_in_the_way_writes_nothing(good_ckpt, tmp_path):
    from ddpm.export.core import export_checkpoint

    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(OutputError, match="a folder is in the way"):
        export_checkpoint(good_ckpt, tmp_path, validate=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no model.ts either


