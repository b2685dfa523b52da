"""Embedding ddpm.runtime.Sampler in a service: sessions under concurrent mixed shapes,
cancellation and deadlines, asyncio, close/context manager, warm-up, thread budget, PNG bytes.

All tests use the bundled digits model (16x16, conditional, ONNX only: no export needed)
with few steps; every test that waits on threads has a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib

import numpy as np
import pytest

from ddpm.errors import BackendError, Cancelled, ConfigError
from ddpm.runtime import Sampler, set_thread_budget, thread_budget
from ddpm.runtime.engines.sessions import SessionCache


@pytest.fixture(scope="module")
def shared() -> Sampler:
    return Sampler.default(num_threads=2)


def _join(threads: list[threading.Thread], timeout: float = 120) -> None:
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
        assert not th.is_alive(), "a sampling thread hung"


def test_mixed_shapes_build_each_session_once_and_match_serial(shared):
    """8 threads, mixed n / batch size / guidance on one Sampler: every image equals the
    serial run and each (threads, batch) session is built once, never inside a request."""
    s = Sampler.default(num_threads=2)
    kws = [dict(n=1 + k % 5, steps=3, seed=k, batch_size=1 + k % 3, guidance=(1.0, 3.0)[k % 2]) for k in range(16)]
    serial = [shared.sample(**kw).samples for kw in kws]
    got: list = [None] * len(kws)
    barrier = threading.Barrier(8)

    def work(w: int) -> None:
        barrier.wait()
        for k in range(w, len(kws), 8):
            got[k] = s.sample(**kws[k]).samples

    _join([threading.Thread(target=work, args=(w,)) for w in range(8)])
    for k in range(len(kws)):
        np.testing.assert_array_equal(got[k], serial[k])
    assert s.engine.sessions.created == len(s.engine.sessions.keys())  # nothing rebuilt
    assert s.engine.sessions.in_use() == 0  # every request gave its sessions back


def test_held_sessions_survive_a_tiny_cache_under_concurrency():
    """max_sessions=1 and two concurrent requests of other shapes: each request builds its
    sessions once (held for all steps), instead of evicting the other's every step."""
    s = Sampler.default(num_threads=1, max_sessions=1)
    barrier = threading.Barrier(2)

    def work(n: int) -> None:
        barrier.wait()
        s.sample(n, steps=8, guidance=1.0)

    _join([threading.Thread(target=work, args=(n,)) for n in (2, 3)])
    assert s.engine.sessions.created == 2
    assert len(s.engine.sessions.keys()) == 1  # back within the bound once both are done


def test_cache_builds_one_key_at_a_time_without_blocking_other_keys():
    started, release = threading.Event(), threading.Event()
    built: list = []

    def build(key):
        built.append(key)
        if key == "slow":
            started.set()
            assert release.wait(10)
        return f"session-{key}"

    cache = SessionCache(build, lambda key: 1, max_sessions=4)
    results: dict = {}
    slow = [threading.Thread(target=lambda i=i: results.setdefault(i, cache.acquire("slow"))) for i in range(3)]
    for th in slow:
        th.start()
    assert started.wait(10)
    assert cache.acquire("fast") == "session-fast"  # not stuck behind the slow build
    release.set()
    for th in slow:
        th.join(10)
    assert built.count("slow") == 1 and set(results.values()) == {"session-slow"}


def test_cancel_stops_within_one_step_and_frees_sessions(shared):
    stop = threading.Event()
    steps: list[int] = []

    def progress(done: int, total: int) -> None:
        steps.append(done)
        if done == 2:
            stop.set()  # e.g. the client disconnected

    with pytest.raises(Cancelled) as e:
        shared.sample(4, steps=20, progress=progress, cancel=stop)
    assert e.value.reason == "cancelled" and steps == [1, 2]
    assert shared.engine.sessions.in_use() == 0


def test_past_deadline_runs_no_step(shared):
    steps: list[int] = []
    with pytest.raises(Cancelled, match="deadline") as e:
        shared.sample(2, steps=5, deadline=time.monotonic(), progress=lambda d, t: steps.append(d))
    assert e.value.reason == "deadline" and steps == []


def test_asample_eight_tasks_equal_sample(shared):
    kws = [dict(n=2 + k % 3, steps=3, seed=10 + k, labels=k % 10) for k in range(8)]
    want = [shared.sample(**kw).samples for kw in kws]

    async def main():
        return await asyncio.wait_for(asyncio.gather(*(shared.asample(**kw) for kw in kws)), 120)

    got = asyncio.run(main())
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.samples, w)


def test_asample_task_cancel_stops_the_worker(shared):
    steps: list[int] = []

    async def main():
        task = asyncio.create_task(shared.asample(2, steps=200, progress=lambda d, t: steps.append(d)))
        while not steps:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(steps)

    at_cancel = asyncio.run(asyncio.wait_for(main(), 120))
    time.sleep(0.2)
    assert len(steps) == at_cancel < 200  # the worker stopped; nothing ran after the task ended
    assert shared.engine.sessions.in_use() == 0


def test_asample_bad_input_raises_in_the_task(shared):
    with pytest.raises(ConfigError) as e:
        asyncio.run(shared.asample(0))
    assert e.value.field == "n"


def test_close_and_context_manager():
    with Sampler.default(num_threads=1) as s:
        s.sample(1, steps=1)
    with pytest.raises(BackendError, match="closed"):
        s.sample(1, steps=1)
    assert s.engine.sessions.keys() == []


def test_warmup_builds_what_a_request_needs():
    s = Sampler.default(num_threads=1).warmup(batch_sizes=(2, 3))
    assert set(s.engine.sessions.keys()) == {(1, 4), (1, 6)}  # guidance 3: cond + null halves
    created = s.engine.sessions.created
    s.sample(3, steps=2)
    assert s.engine.sessions.created == created
    with pytest.raises(ConfigError):
        s.warmup(batch_sizes=(0,))


def test_thread_budget_caps_concurrent_model_runs():
    samplers = [Sampler.default(num_threads=1) for _ in range(2)]
    live, peak = [0], [0]
    lock = threading.Lock()
    for s in samplers:
        real = s.engine._run1

        def counted(*a, real=real):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            try:
                time.sleep(0.002)  # widen the window in which overlap would show
                return real(*a)
            finally:
                with lock:
                    live[0] -= 1

        s.engine._run1 = counted
    before = thread_budget()
    try:
        set_thread_budget(1)
        _join([threading.Thread(target=samplers[k % 2].sample, args=(2,), kwargs=dict(steps=4)) for k in range(6)])
        assert peak[0] == 1
        with pytest.raises(ConfigError):
            set_thread_budget(0)
    finally:
        set_thread_budget(before)


def test_png_bytes_grid_and_per_image(shared):
    r = shared.sample(3, steps=2)
    grid = r.png_bytes()
    assert grid[:8] == b"\x89PNG\r\n\x1a\n" and zlib.crc32(grid[12:29]) == int.from_bytes(grid[29:33], "big")
    w, h = int.from_bytes(grid[16:20], "big"), int.from_bytes(grid[20:24], "big")
    assert (w, h) == (2 * 18 + 2, 2 * 18 + 2)  # 2 per row, 16 px + 2 px padding
    singles = r.png_bytes(grid=False, scale=2)
    assert len(singles) == 3 and int.from_bytes(singles[0][16:20], "big") == 32


def test_small_batches_reuse_a_slightly_larger_session_and_give_the_same_images():
    """With (1, 8) built, a batch of 7 (or 6) runs padded on it instead of building (1, 7);
    the padding rows are dropped and change no image (pad_slack=1 builds exact sessions)."""
    padded = Sampler.default(num_threads=1).warmup(batch_sizes=(8,), guidance=1.0)
    exact = Sampler.default(num_threads=1, pad_slack=1.0)
    for n in (7, 6):
        np.testing.assert_array_equal(
            padded.sample(n, steps=3, guidance=1.0).samples, exact.sample(n, steps=3, guidance=1.0).samples
        )
    assert padded.engine.sessions.keys() == [(1, 8)]
    assert set(exact.engine.sessions.keys()) == {(1, 7), (1, 6)}
    padded.sample(5, steps=1, guidance=1.0)  # 5 * 4/3 < 8: too much padding, build (1, 5)
    assert (1, 5) in padded.engine.sessions.keys()
    with pytest.raises(ConfigError, match="pad_slack"):
        Sampler.default(pad_slack=0.5)
