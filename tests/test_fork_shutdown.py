"""Forked children, spawn pools and interpreter shutdown sample or fail cleanly, never hang.

Each case runs in a fresh interpreter (the bundled digits model, few steps) under a
timeout, so a hang fails the test instead of the suite. ``num_threads=2`` makes the
engine split batches over its thread pool, which is the state a fork must not inherit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

FORK = """
import multiprocessing as mp, os, sys
import numpy as np
from ddpm.runtime import Sampler

s = Sampler.default(num_threads=2)
want = s.sample(4, steps=3, seed=5).samples  # starts the pool and builds sessions

def child(seed):
    return s.sample(4, steps=3, seed=seed).samples

if __name__ == "__main__":
    pid = os.fork()
    if pid == 0:  # a bare fork: the child samples with the inherited Sampler
        os._exit(0 if np.array_equal(child(5), want) else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(child, [5, 5, 6])
    assert np.array_equal(got[0], want) and np.array_equal(got[1], want)
    assert not np.array_equal(got[2], want)
    print("OK")
"""

SPAWN = """
import multiprocessing as mp
import numpy as np

def work(seed):
    from ddpm.runtime import Sampler
    return Sampler.default(num_threads=1).sample(3, steps=3, seed=seed).samples

if __name__ == "__main__":
    from ddpm.runtime import Sampler
    want = Sampler.default(num_threads=2).sample(3, steps=3, seed=1).samples
    with mp.get_context("spawn").Pool(2) as pool:
        got = pool.map(work, [1, 1])
    assert all(np.array_equal(g, want) for g in got)
    print("OK")
"""

SHUTDOWN = """
import threading, time
from ddpm.runtime import Sampler

s = Sampler.default(num_threads=2)
s.sample(2, steps=1)  # the pool exists; interpreter exit then shuts it down

def late():
    time.sleep(0.5)  # the main thread has returned: the interpreter is shutting down
    r = s.sample(4, steps=3, seed=2)
    print("LATE", r.images.shape, flush=True)

threading.Thread(target=late).start()  # non-daemon: the interpreter waits for it
"""


def _run(script: str, tmp_path) -> subprocess.CompletedProcess:
    f = tmp_path / "case.py"  # a file, not -c: spawn children re-import the main module
    f.write_text(script)
    p = subprocess.run([sys.executable, str(f)], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_forked_children_sample_after_the_parent_did(tmp_path):
    assert "OK" in _run(FORK, tmp_path).stdout


def test_spawn_pool_samples_like_the_parent(tmp_path):
    assert "OK" in _run(SPAWN, tmp_path).stdout


def test_sampling_during_interpreter_shutdown_runs_inline(tmp_path):
    p = _run(SHUTDOWN, tmp_path)
    assert "LATE (4, 16, 16, 1)" in p.stdout and "Traceback" not in p.stderr
