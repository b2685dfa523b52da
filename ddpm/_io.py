"""Atomic file output: write to a temp file in the destination folder, then ``os.replace``.

Nothing half-written is ever left at the final path, whatever fails in between.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ddpm.errors import OutputError


def check_writable_dir(directory: str | os.PathLike, *, what: str = "output") -> Path:
    """Create ``directory`` if needed and prove we can write there, or raise OutputError."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".ddpm-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"cannot write {what} to {str(d)!r}: {e.strerror or e}; choose a writable folder"
        ) from None
    return d


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success move it into place, else delete it.

    Usage::

        with atomic_path("out/model.onnx") as tmp:
            write_somehow(tmp)
    """
    final = Path(path)
    check_writable_dir(final.parent if str(final.parent) else ".", what=final.name)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
