"""``--backend auto``: per batch size, the faster of ONNX Runtime and OpenVINO on this CPU.

Opens model.onnx on the ORT engine (always) and on the OpenVINO engine (when the package is
installed and the device is the CPU). The first call at a batch size runs the timed probe of
:mod:`ddpm.runtime.probe` (or reads its cached result) and later calls at that size go to the
winner. Both engines compute the same fp32 network (parity within 1e-4 per call), so the
choice changes speed, not images beyond float rounding. On CUDA, auto is ORT.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddpm.runtime import probe
from ddpm.runtime.engines.base import RunFn


class AutoEngine:
    """ORT or OpenVINO per batch size, by a cached timed probe (see the module doc)."""

    name = "auto"
    default_file = "model.onnx"
    written_by = "ddpm-export"
    compute_precisions = ("fp32",)

    def __init__(
        self, path: Path, device: str = "cpu", *, num_threads: int | None = None,
        cache: bool = True, spin: bool = False, max_sessions: int | None = None,
        max_session_bytes: int | None = None,
    ) -> None:
        from ddpm.runtime.engines.ort import OrtEngine

        self.path = Path(path)
        self.device = device
        self.cache = cache
        ort = OrtEngine(path, device, num_threads=num_threads, spin=spin, max_sessions=max_sessions,
                        max_session_bytes=max_session_bytes)
        self.engines: dict[str, Any] = {"ort": ort}
        self.contract = self.engines["ort"].contract
        self.threads = self.engines["ort"].threads
        if device == "cpu" and importlib.util.find_spec("openvino") is not None:
            from ddpm.runtime.engines.openvino import OpenVinoEngine

            self.engines["openvino"] = OpenVinoEngine(path, device, num_threads=num_threads)
        #: batch size -> engine name chosen for it; ``probes`` keeps the timings measured here.
        self.choices: dict[int, str] = {}
        self.probes: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()

    def engine_for(self, batch: int) -> Any:
        """The engine serving model batches of ``batch``, probing on first use."""
        with self._lock:  # one probe per batch size, even with many threads calling
            name = self.choices.get(batch)
            if name is None:
                key = probe.probe_key(self.path, batch, self.threads)
                runs = {n: e.run for n, e in self.engines.items()}
                name, ms = probe.choose(runs, self.contract, batch, key, cache=self.cache)
                self.choices[batch] = name
                self.probes[batch] = ms
        return self.engines[name]

    @contextlib.contextmanager
    def hold(self, batch: int) -> Iterator[RunFn]:
        engine = self.engine_for(batch)
        if hasattr(engine, "hold"):
            with engine.hold(batch) as run:
                yield run
        else:
            yield engine.run

    def run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return self.engine_for(int(x.shape[0])).run(x, t, y)

    def close(self) -> None:
        for e in self.engines.values():
            e.close()
