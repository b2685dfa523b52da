"""A session cache that scales with concurrent requests of mixed shapes.

Policy (one entry per distinct key in use, e.g. (threads, batch) of a fixed-batch ORT
session):

- A caller *holds* an entry for as long as it needs it (a whole batch of a request, every
  step), so the entry cannot be evicted under it and the lookup happens once per batch.
- A missing entry is built outside the cache lock by exactly one caller; callers wanting
  the same key wait for that build, callers wanting other keys are not blocked.
- Entries nobody holds are kept for reuse and dropped least-recently-used first when more
  than ``max_sessions`` exist or their estimated size exceeds ``max_bytes``. Held entries
  are never dropped, so the cache can exceed its bounds by what concurrent requests hold.

``created`` and ``evicted`` count builds and drops (benchmarks report them).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import ddpm.runtime.forksafe as forksafe
from ddpm.errors import ConfigError

#: Idle sessions kept per engine: enough for every batch size of a mixed workload of
#: n 1..32 with guidance (chunks 1..32 on 1 thread, plus the one-image multi-thread session).
DEFAULT_MAX_SESSIONS = 40
#: Bytes all of an engine's idle sessions may hold (weights + arena, as ``entry_bytes``
#: reports them; the ORT engine measures each session's resident-memory growth).
DEFAULT_MAX_BYTES = 512 << 20


@dataclass
class _Entry:
    session: Any
    nbytes: int
    users: int = 0


def check_bounds(max_sessions: int | None, max_bytes: int | None) -> tuple[int, int]:
    """Validated (max_sessions, max_bytes), defaults filled in."""
    ms = DEFAULT_MAX_SESSIONS if max_sessions is None else max_sessions
    mb = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    for name, v in (("max_sessions", ms), ("max_session_bytes", mb)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {v!r}", field=name)
    return ms, mb


class SessionCache:
    """Build-once, hold-while-used, LRU-bounded map from a key to a session."""

    def __init__(
        self,
        build: Callable[[Any], Any],
        entry_bytes: Callable[[Any], int],
        *,
        max_sessions: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._build = build
        self._entry_bytes = entry_bytes
        self.max_sessions, self.max_bytes = check_bounds(max_sessions, max_bytes)
        self._cond = threading.Condition()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._building: set[Hashable] = set()
        self.created = 0
        self.evicted = 0
        forksafe.register(self)

    def configure(self, max_sessions: int | None = None, max_bytes: int | None = None) -> None:
        """Change the bounds (None keeps a bound as it is); idle entries over them are dropped."""
        ms, mb = check_bounds(
            self.max_sessions if max_sessions is None else max_sessions,
            self.max_bytes if max_bytes is None else max_bytes,
        )
        with self._cond:
            self.max_sessions, self.max_bytes = ms, mb
            self._evict()

    def keys(self) -> list[Hashable]:
        """Keys of the built entries, least recently used first."""
        with self._cond:
            return list(self._entries)

    def nbytes(self) -> int:
        with self._cond:
            return sum(e.nbytes for e in self._entries.values())

    def in_use(self) -> int:
        """How many entries some caller holds right now."""
        with self._cond:
            return sum(e.users > 0 for e in self._entries.values())

    def acquire(self, key: Hashable) -> Any:
        """The session for ``key``, built on first use; pair with :meth:`release`."""
        with self._cond:
            while True:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.users += 1
                    self._entries.move_to_end(key)
                    return entry.session
                if key not in self._building:
                    self._building.add(key)
                    break
                self._cond.wait()  # another thread is building this key
        try:
            session = self._build(key)  # slow (~100 ms); other keys proceed meanwhile
        except BaseException:
            with self._cond:
                self._building.discard(key)
                self._cond.notify_all()  # a waiter retries the build and gets the error itself
            raise
        with self._cond:
            self._building.discard(key)
            self._entries[key] = _Entry(session, self._entry_bytes(key), users=1)
            self.created += 1
            self._evict()
            self._cond.notify_all()
        return session

    def release(self, key: Hashable) -> None:
        with self._cond:
            entry = self._entries.get(key)
            if entry is not None:
                entry.users -= 1
                self._evict()

    @contextlib.contextmanager
    def hold(self, keys: list[Hashable]) -> Iterator[dict[Hashable, Any]]:
        """{key: session} for every key, held for the block."""
        held: dict[Hashable, Any] = {}
        try:
            for key in dict.fromkeys(keys):
                held[key] = self.acquire(key)
            yield held
        finally:
            for key in held:
                self.release(key)

    def clear(self) -> None:
        """Drop every idle entry (held ones go when released)."""
        with self._cond:
            for key in [k for k, e in self._entries.items() if e.users <= 0]:
                del self._entries[key]

    def _evict(self) -> None:
        # Called with the lock held: drop idle entries, oldest first, until within bounds.
        def over() -> bool:
            total = sum(e.nbytes for e in self._entries.values())
            return len(self._entries) > self.max_sessions or total > self.max_bytes

        while over():
            idle = next((k for k, e in self._entries.items() if e.users <= 0), None)
            if idle is None:
                return
            del self._entries[idle]
            self.evicted += 1

    def _after_fork_in_child(self) -> None:
        # Sessions with intra-op pools lost their threads; builds in flight were parent
        # threads. Keep the old objects referenced (never destroyed) and start empty.
        forksafe.inherited.append(self._entries)
        self._entries = OrderedDict()
        self._building = set()
        self._cond = threading.Condition()
