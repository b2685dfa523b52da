"""The process-wide CPU thread budget shared by every Sampler.

Each model call on the ORT CPU engine takes as many tokens as compute threads it is about
to use (its chunk count, or the session's intra-op threads) and gives them back when the
call returns. With the budget at the physical core count (the default), eight requests on
four Samplers in one process run at most that many ORT threads at once instead of
oversubscribing the CPU; calls queue at step granularity, so a long request does not
starve short ones. Set it with :func:`set_thread_budget` (e.g. 1 per worker process when
a server forks one worker per core).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import ddpm.runtime.forksafe as forksafe
from ddpm.errors import ConfigError
from ddpm.runtime.ort_session import physical_cores


class ThreadBudget:
    """A counting semaphore over CPU threads: ``take(k)`` blocks until k tokens are free."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._cond = threading.Condition()
        forksafe.register(self)

    def set_total(self, total: int) -> None:
        with self._cond:
            self._free += total - self.total
            self.total = total
            self._cond.notify_all()

    @contextlib.contextmanager
    def take(self, k: int) -> Iterator[int]:
        """Hold min(k, total) tokens for the block; yields the number held."""
        with self._cond:
            k = max(1, min(k, self.total))
            while self._free < k:
                self._cond.wait()
            self._free -= k
        try:
            yield k
        finally:
            with self._cond:
                self._free += k
                self._cond.notify_all()

    def _after_fork_in_child(self) -> None:
        # Holders were parent threads, which the child does not have.
        self._cond = threading.Condition()
        self._free = self.total


BUDGET = ThreadBudget(physical_cores())


def set_thread_budget(total: int | None) -> int:
    """Cap the CPU threads all Samplers in this process use at once (None: physical cores)."""
    if total is None:
        total = physical_cores()
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        raise ConfigError(f"thread budget must be an integer >= 1, got {total!r}", field="total")
    BUDGET.set_total(total)
    return total


def thread_budget() -> int:
    """The current process-wide thread budget."""
    return BUDGET.total
