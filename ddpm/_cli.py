"""Shared CLI plumbing: turn DDPMError into a one-line message and its exit code."""

from __future__ import annotations

import functools
import sys

import click

from ddpm.errors import DDPMError


def friendly_errors(fn):
    """Decorator for click commands: DDPMError -> ``error: ...`` on stderr, exit its code.

    KeyboardInterrupt exits 130 without a traceback. Any other exception is a bug in ddpm
    and keeps its traceback so it can be reported.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DDPMError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper
