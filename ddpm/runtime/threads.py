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

#: A thread count above this many per physical core only adds contention (and ORT's pool
#: creation fails in odd ways for tens of thousands of threads), so it is refused.
MAX_THREADS_PER_CORE = 4


def check_threads(value: object, field: str = "num_threads") -> int | None:
    """``value`` (None: the default) as a thread count in 1..4x the physical cores, else
    ConfigError with ``field`` set."""
    if value is None:
        return None
    top = MAX_THREADS_PER_CORE * physical_cores()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ConfigError(
            f"{field} must be an integer in 1..{top} ({MAX_THREADS_PER_CORE}x this machine's "
            f"{physical_cores()} physical cores), got {value!r}; pass e.g. {physical_cores()} "
            "or leave it unset for the physical cores", field=field,
        )
    return value


def set_thread_budget(total: int | None) -> int:
    """Cap the CPU threads all Samplers in this process use at once (None: physical cores)."""
    total = check_threads(total, field="total") or physical_cores()
    BUDGET.set_total(total)
    return total


def thread_budget() -> int:
    """The current process-wide thread budget."""
    return BUDGET.total
