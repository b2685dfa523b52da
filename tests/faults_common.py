"""Helpers shared by the fault tests: run a CLI for real, check its one-line error,
find leftover temp files, resave a checkpoint with one change, mount a tiny tmpfs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_cli(name: str, *args: str, env: dict | None = None, timeout: int = 240):
    """Run an installed ``ddpm-*`` script in a real process (exit codes, stderr, no tracebacks)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def assert_one_line_error(proc, codes=(1, 2), contains: str = "") -> str:
    """Exit code in ``codes``, exactly one non-empty stderr line, ``error:``, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode in codes, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert contains in lines[0], lines[0]
    return lines[0]


def no_temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def resave(ckpt_path: Path, dest: Path, change) -> Path:
    """``ckpt_path`` loaded, edited in place by ``change(ckpt)``, saved (atomically) at dest."""
    import torch

    from ddpm.models.checkpoint import save_checkpoint

    ckpt = copy.deepcopy(torch.load(ckpt_path, weights_only=True))
    change(ckpt)
    return save_checkpoint(dest, ckpt)


def mount_tmpfs(mnt: Path, options: str = "size=1m") -> None:
    """Mount a tmpfs (needs root and mount permission); skip the test with the reason if not."""
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {proc.stderr.strip()}")


def unmount(mnt: Path) -> None:
    # Lazy: a failed writer's traceback may still hold an open (deleted) temp file.
    subprocess.run(["umount", "-l", str(mnt)], check=False)
