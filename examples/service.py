"""A small image-sampling HTTP service around one shared Sampler (stdlib only).

    python examples/service.py --port 8000 [--model model.onnx] [--threads 2]
    curl -s -X POST localhost:8000/sample -d '{"n": 16, "steps": 20, "labels": 7}' -o grid.png

``POST /sample`` takes a JSON object with any of the keywords of ``Sampler.sample`` (n,
steps, sampler, eta, seed, labels, guidance, batch_size) plus ``timeout_s`` (default 60)
and answers ``image/png`` (the grid), or ``400 {"error": ..., "field": ...}`` for bad
input, ``504`` when the request passed its deadline, ``503`` while shutting down.
``GET /healthz`` answers ``ok``. One Sampler serves every request thread: sessions are
shared and cached per batch size, and the process-wide thread budget keeps concurrent
requests from oversubscribing the CPU. SIGTERM / Ctrl-C stop accepting requests and let
the ones in flight finish.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ddpm.errors import Cancelled, DDPMError
from ddpm.runtime import Sampler

KEYS = ("n", "steps", "sampler", "eta", "seed", "labels", "guidance", "batch_size")
LIMITS = {"n": 64, "steps": 200}  # a public endpoint should bound the work one request asks for


class Service(ThreadingHTTPServer):
    daemon_threads = False  # shutdown waits for requests in flight
    block_on_close = True

    def __init__(self, address: tuple[str, int], sampler: Sampler) -> None:
        super().__init__(address, Handler)
        self.sampler = sampler
        self.stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    server: Service

    def log_message(self, *args) -> None:  # keep stderr quiet; a real service would log
        pass

    def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str, field: str | None = None) -> None:
        self._reply(code, json.dumps({"error": message, "field": field}).encode())

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, b"ok", "text/plain")
        else:
            self._error(404, f"no such path {self.path!r}; use POST /sample or GET /healthz")

    def do_POST(self) -> None:
        if self.path != "/sample":
            return self._error(404, f"no such path {self.path!r}; use POST /sample")
        if self.server.stopping.is_set():
            return self._error(503, "the service is shutting down; retry on another instance")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            return self._error(400, f"request body is not a JSON object ({e})")
        unknown = sorted(set(body) - {*KEYS, "timeout_s"})
        if unknown:
            return self._error(400, f"unknown key {unknown[0]!r}; expected {', '.join(KEYS)}, timeout_s", unknown[0])
        for key, top in LIMITS.items():
            v = body.get(key)
            if isinstance(v, int) and v > top:
                return self._error(400, f"{key} must be at most {top} on this service, got {v}", key)
        timeout = body.pop("timeout_s", 60)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            return self._error(400, f"timeout_s must be a number > 0, got {timeout!r}", "timeout_s")
        try:
            result = self.server.sampler.sample(**body, deadline=time.monotonic() + timeout)
        except Cancelled as e:
            return self._error(504, str(e))
        except DDPMError as e:
            return self._error(400, str(e), e.field)
        self._reply(200, result.png_bytes(), "image/png")


def serve(sampler: Sampler, host: str = "127.0.0.1", port: int = 8000) -> Service:
    """A started service (its own thread); call ``stop(service)`` to drain and close it."""
    service = Service((host, port), sampler)
    threading.Thread(target=service.serve_forever, name="ddpm-service", daemon=True).start()
    return service


def stop(service: Service) -> None:
    """Refuse new requests, wait for those in flight, close the socket."""
    service.stopping.set()
    service.shutdown()
    service.server_close()


def main() -> None:
    ap = argparse.ArgumentParser(description="ddpm sampling service")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default=None, help="model.onnx or its folder (default: bundled digits)")
    ap.add_argument("--threads", type=int, default=None, help="ORT threads (default: physical cores)")
    a = ap.parse_args()
    with Sampler.from_path(a.model, num_threads=a.threads) as sampler:
        sampler.warmup(batch_sizes=(1, 16))  # the first requests pay no session set-up
        service = serve(sampler, a.host, a.port)
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        print(f"serving on http://{a.host}:{service.server_address[1]}", flush=True)
        done.wait()
        stop(service)


if __name__ == "__main__":
    main()
