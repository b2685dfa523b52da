"""Per-process state reset in a forked child (``os.register_at_fork``).

A child made by ``fork()`` inherits locks that may be held by parent threads that no longer
exist, thread pools whose workers are gone, and ONNX Runtime sessions whose intra-op pools
are dead. Objects holding such state register here; in the child each gets
``_after_fork_in_child()`` called, which must replace locks and pools and forget (but never
destroy: destroying a pool with dead workers can block) anything tied to parent threads.
fork is the default ``multiprocessing`` start method on Linux before Python 3.14, so a
service that samples and then forks workers relies on this.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_live_lock = threading.Lock()
#: State orphaned by a fork: kept alive so its destructors (joins on dead threads) never run.
inherited: list[Any] = []


def register(obj: ForkAware) -> None:
    """Have ``obj._after_fork_in_child()`` called in every child forked after this."""
    with _live_lock:
        _live.add(obj)


def _reset_in_child() -> None:
    global _live_lock
    _live_lock = threading.Lock()
    for obj in list(_live):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_reset_in_child)
