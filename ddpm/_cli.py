"""Shared CLI plumbing: every failure of every ``ddpm-*`` command ends in one line.

Exit codes, the same for ``ddpm-train``, ``ddpm-export``, ``ddpm-run`` and ``ddpm-bench``:

- 0: success.
- 1: a runtime failure: a failed validation, a full disk, out of memory, non-finite values,
  an unexpected error (a bug: the line says how to get its traceback).
- 2: bad input or usage: an unknown option, a value out of range, an unreadable or foreign
  model file, a path that cannot be written (permissions, read-only, a folder in the way).
- 130: interrupted (Ctrl-C).

``--debug`` (added to every command built with :class:`OneLineCommand`) or ``DDPM_DEBUG=1``
prints the traceback before the ``error:`` line.

Use both pieces: ``@click.command(cls=OneLineCommand)`` turns click's usage errors into one
line, and ``@friendly_errors`` on the callback turns everything raised inside it into one line.
"""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import os
import sys
import traceback

import click

from ddpm.errors import DDPMError

DEBUG_ENV = "DDPM_DEBUG"
DEBUG_HINT = f"rerun with {DEBUG_ENV}=1 for the traceback"

#: errno -> (exit code, the fix). Codes: 2 when the user must pick another path, 1 when the
#: machine ran out of something.
OS_ERRORS: dict[int, tuple[int, str]] = {
    errno.ENOSPC: (1, "free disk space or choose an output folder on another disk"),
    errno.EDQUOT: (1, "free space within your disk quota or choose another output folder"),
    errno.EIO: (1, "the disk reported an I/O error; check it or choose another folder"),
    errno.EMFILE: (1, "too many open files; raise `ulimit -n`"),
    errno.EACCES: (2, "check the permissions or choose another path"),
    errno.EPERM: (2, "check the permissions or choose another path"),
    errno.EROFS: (2, "the file system is read-only; choose a writable folder"),
    errno.EISDIR: (2, "a folder is in the way; remove it or choose another path"),
    errno.ENOTDIR: (2, "a file is in the way where a folder is needed; choose another path"),
    errno.ENOENT: (2, "check the path"),
    errno.EEXIST: (2, "remove it or choose another path"),
    errno.ENAMETOOLONG: (2, "use a shorter path"),
}


#: Set by ``--debug`` for the command being run (reset by each OneLineCommand.main).
_debug_flag = False


def debug_enabled() -> bool:
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return _debug_flag or env


def _one_line(text: str, limit: int = 500) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " ".join(lines)[:limit] if lines else ""


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message (without ``error:``) and the exit code for ``exc``."""
    if isinstance(exc, DDPMError):
        return _one_line(str(exc)) or type(exc).__name__, exc.exit_code
    if isinstance(exc, OSError) and exc.errno in OS_ERRORS:
        code, fix = OS_ERRORS[exc.errno]
        where = f": {str(exc.filename)!r}" if exc.filename is not None else ""
        return f"{exc.strerror or os.strerror(exc.errno)}{where}; {fix}", code
    if isinstance(exc, MemoryError):
        return ("out of memory; use a smaller --batch-size / -n or image size, "
                "or run on a machine with more memory"), 1
    text = _one_line(str(exc), 300)
    return f"unexpected {type(exc).__name__}{': ' + text if text else ''}; {DEBUG_HINT}", 1


def report(exc: BaseException) -> int:
    """Print ``exc`` as one ``error:`` line on stderr (the traceback first in debug mode)."""
    message, code = describe(exc)
    if debug_enabled():
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"error: {message}", err=True)
    return code


def friendly_errors(fn):
    """Decorator for click callbacks: any exception -> one ``error:`` line and its exit code.

    click's own exceptions pass through (``OneLineCommand`` prints those); SystemExit too.
    KeyboardInterrupt exits 130 without a traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 -- the point: no traceback reaches the user
            sys.exit(report(e))

    return wrapper


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    global _debug_flag
    _debug_flag = _debug_flag or bool(value)


def debug_option() -> click.Option:
    return click.Option(
        ["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
        help=f"Print the traceback of an error (same as {DEBUG_ENV}=1).",
    )


_fast_exit_registered = False


def _fast_exit() -> None:
    """Skip the garbage collections of interpreter shutdown once a command has run.

    With torch, scipy and matplotlib loaded (~3000 modules, ~400k tracked objects) CPython's
    shutdown collections took 4-5 s on a 2-core machine after every ddpm-train, Ctrl-C
    included; freezing the heap at exit (atexit runs before those collections) takes that to
    ~0.7 s. Files are closed by their ``with`` blocks and std streams are flushed by CPython
    regardless, so no output depends on those collections.
    """
    global _fast_exit_registered
    if not _fast_exit_registered:
        atexit.register(gc.freeze)
        _fast_exit_registered = True


class OneLineCommand(click.Command):
    """A click command whose usage errors (``--steps abc``) are one ``error:`` line, exit 2.

    Adds ``--debug``. Whatever escapes the callback (when it lacks ``@friendly_errors``)
    is reported the same way, so no traceback ever reaches the user unless asked for.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not any(p.name == "debug" for p in self.params):
            self.params.append(debug_option())

    def main(self, *args, **kwargs):  # type: ignore[override]
        global _debug_flag
        _debug_flag = False
        _fast_exit()
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            prog = ctx.command_path if ctx is not None else (self.name or "the command")
            if debug_enabled():
                traceback.print_exception(e, file=sys.stderr)
            click.echo(f"error: {_one_line(e.format_message()).rstrip('.')}; "
                       f"see {prog} --help", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001
            sys.exit(report(e))
