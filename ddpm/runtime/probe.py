"""A short timed probe choosing the faster CPU engine for one model at one batch size.

Which engine wins depends on the model, the batch and the CPU: on a 2-core AVX2 EPYC the
bundled digits model runs faster on OpenVINO at batch 16 and slower at batch 1, while on
AMX Xeons OpenVINO wins more often. So ``--backend auto`` times a few calls of each candidate
at the batch it is about to run, on the same inputs, and keeps the fastest. The choice is
cached in the user cache folder, keyed by the model file (path, size, mtime), the machine
(CPU model, ISA flags, cores), the thread count and the batch, so only the first run of a
(model, machine, batch) pays for the probe.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.artifact import Contract
from ddpm.cpuinfo import machine_key

RunFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]
#: Timed calls per candidate, after one untimed warm-up call (compilation, allocations).
PROBE_CALLS = 3
CACHE_FILE = "backend_probe.json"
_file_lock = threading.Lock()


def cache_path() -> Path:
    from ddpm.runtime.engines.openvino import user_cache_dir

    return user_cache_dir() / CACHE_FILE


def probe_key(path: Path, batch: int, threads: int) -> str:
    """What a probe result depends on: this exact model file, this machine, threads, batch."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{machine_key()}|t{threads}|b{batch}"


def probe_inputs(contract: Contract, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inputs shaped like a sampling call (mid-schedule timestep; every label costs the same)."""
    x = np.random.default_rng(0).standard_normal((batch, *contract.image_shape)).astype(np.float32)
    t = np.full(batch, contract.schedule_config.num_train_timesteps // 2, np.int64)
    y = np.zeros(batch, np.int64) if contract.conditional else None
    return x, t, y


def time_ms(run: RunFn, inputs: tuple, calls: int = PROBE_CALLS) -> float:
    """Median wall time of ``calls`` calls of ``run`` after one warm-up call, in ms."""
    run(*inputs)
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run(*inputs)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def _load(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):  # absent, unreadable or half-edited by hand: start afresh
        return {}
    return data if isinstance(data, dict) else {}


def cached_choice(key: str, candidates: Mapping[str, Any], p: Path | None = None) -> str | None:
    """The cached winner for ``key`` if it is still one of ``candidates``."""
    rec = _load(p or cache_path()).get(key)
    name = rec.get("choice") if isinstance(rec, dict) else None
    return name if name in candidates else None


def store_choice(key: str, record: dict[str, Any], p: Path | None = None) -> None:
    """Add ``record`` under ``key`` (atomic rewrite; an unwritable cache only costs re-probing)."""
    from ddpm._io import atomic_write_bytes
    from ddpm.errors import OutputError

    p = p or cache_path()
    with _file_lock:
        data = _load(p)
        data[key] = record
        try:
            atomic_write_bytes(p, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        except (OSError, OutputError):
            pass


def choose(
    candidates: Mapping[str, RunFn], contract: Contract, batch: int, key: str, *,
    cache: bool = True, calls: int = PROBE_CALLS,
) -> tuple[str, dict[str, float]]:
    """The fastest of ``candidates`` at ``batch`` and its probe timings (empty if cached)."""
    if len(candidates) == 1:
        return next(iter(candidates)), {}
    if cache:
        hit = cached_choice(key, candidates)
        if hit is not None:
            return hit, {}
    inputs = probe_inputs(contract, batch)
    ms = {name: time_ms(run, inputs, calls) for name, run in candidates.items()}
    best = min(ms, key=ms.__getitem__)
    if cache:
        store_choice(key, {"choice": best, "ms_per_call": {k: round(v, 3) for k, v in ms.items()},
                           "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return best, ms
