"""Atomic file output: write to a temp file in the destination folder, then ``os.replace``.

Nothing half-written is ever left at the final path and no temp file outlives a failure,
whatever fails in between (ENOSPC mid-write, a torch or onnx serializer error, Ctrl-C):

- :func:`atomic_path` -- one file: yields a temp path beside the destination.
- :func:`atomic_files` -- several files committed as a whole or not at all: yields a
  staging folder inside the destination folder; every file written there is moved into place
  on success; if any move fails, the files already moved are put back as they were.

Fault-injection seam (for tests, documented so the suite and users' CI can use it):
``DDPM_FAULT_ENOSPC=N`` makes the N-th commit of this process (1-based: a file about to be
moved into place by either helper) raise ``OSError(ENOSPC)`` after its bytes were written;
``DDPM_FAULT_ENOSPC=N+`` fails that commit and every later one. In-process tests may instead
set :data:`fault_hook` to a callable ``(event, path) -> None`` that raises.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ddpm.errors import OutputError

FAULT_ENV = "DDPM_FAULT_ENOSPC"
STAGE_PREFIX = ".ddpm-stage-"

#: Test seam: called as ``fault_hook(event, final_path)`` before each commit
#: (event "commit" for atomic_path, "move" for each file of atomic_files).
fault_hook: Callable[[str, Path], None] | None = None
_commits = 0


def _fault_point(event: str, final: Path) -> None:
    global _commits
    _commits += 1
    if fault_hook is not None:
        fault_hook(event, final)
    spec = os.environ.get(FAULT_ENV, "").strip()
    if spec:
        n = int(spec.rstrip("+"))
        if _commits == n or (spec.endswith("+") and _commits >= n):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))


def output_error(
    path: str | os.PathLike, e: OSError, what: str = "output", note: str = ""
) -> OutputError:
    """One-line OutputError for a failed write of ``path`` (the exit code follows errno).

    ``note`` is appended, e.g. "the previous ckpt.pt is unchanged"."""
    from ddpm._cli import OS_ERRORS

    code, fix = OS_ERRORS.get(e.errno or 0, (1, "choose another output folder"))
    extra = f"; {note}" if note else ""
    err = OutputError(f"cannot write {what} {str(path)!r}: {e.strerror or e}{extra}; {fix}")
    err.exit_code = code
    return err


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


def _refuse_folder(final: Path) -> None:
    if final.is_dir():
        raise OutputError(
            f"cannot write {str(final)!r}: a folder is in the way; remove it or choose "
            "another output path"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success move it into place, else delete it.

    Usage::

        with atomic_path("out/model.onnx") as tmp:
            write_somehow(tmp)
    """
    final = Path(path)
    _refuse_folder(final)
    check_writable_dir(final.parent if str(final.parent) else ".", what=final.name)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fault_point("commit", final)
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


@contextlib.contextmanager
def atomic_files(directory: str | os.PathLike) -> Iterator[Path]:
    """Commit several files into ``directory`` as a whole or not at all.

    Yields an empty staging folder (hidden, inside ``directory``, so moves never cross a file
    system). Write every output there under its final relative name (sub-folders allowed).
    On success each file replaces ``directory/<name>``; if the block raises, or a move fails,
    ``directory`` is left exactly as it was and the staging folder is removed. A folder in
    the way of any destination is refused before the first move::

        with atomic_files(out) as stage:
            torch.jit.save(ts, stage / "model.ts")
            onnx.save(proto, stage / "model.onnx")
    """
    dest = check_writable_dir(directory)
    stage = Path(tempfile.mkdtemp(dir=dest, prefix=STAGE_PREFIX))
    try:
        yield stage
        files = sorted(p for p in stage.rglob("*") if p.is_file() and ".prev" not in p.parts)
        pairs = [(p, dest / p.relative_to(stage)) for p in files]
        for _, final in pairs:
            _refuse_folder(final)
        _move_all(stage, pairs)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_all(stage: Path, pairs: list[tuple[Path, Path]]) -> None:
    """Move staged files into place; on any failure restore what was there before."""
    backup = stage / ".prev"
    done: list[tuple[Path, Path | None]] = []  # (final, its backup or None if it was absent)
    mask = 0o666 & ~_umask()
    try:
        for staged, final in pairs:
            _fault_point("move", final)
            final.parent.mkdir(parents=True, exist_ok=True)
            saved = None
            if final.exists():
                saved = backup / final.name / str(len(done))
                saved.parent.mkdir(parents=True, exist_ok=True)
                os.replace(final, saved)
            done.append((final, saved))
            os.chmod(staged, mask)
            os.replace(staged, final)
    except BaseException:
        for final, saved in reversed(done):
            with contextlib.suppress(OSError):
                if saved is not None:
                    os.replace(saved, final)
                else:
                    final.unlink()
        raise
