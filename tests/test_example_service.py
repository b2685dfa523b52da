"""examples/service.py on loopback with 8 concurrent clients: images equal the API's,
bad input is a 400 naming the field, a past deadline a 504, and it stops by itself."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ddpm.runtime import Sampler

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "service.py"


@pytest.fixture(scope="module")
def service_module():
    spec = importlib.util.spec_from_file_location("ddpm_example_service", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_service_under_concurrent_clients(service_module):
    sampler = Sampler.default(num_threads=2)
    service = service_module.serve(sampler, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{service.server_address[1]}/sample"
    good = [dict(n=1 + k % 4, steps=2, seed=k, labels=k % 10) for k in range(8)]
    bad = [(dict(n=2, steps=0), "steps"), (dict(n=2, labels=11), "labels"), (dict(n=500), "n"),
           (dict(colour="red"), "colour")]
    results: dict = {}

    def client(k: int) -> None:
        results[("good", k)] = _post(url, good[k])
        if k < len(bad):
            results[("bad", k)] = _post(url, bad[k][0])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(180)
            assert not th.is_alive(), "a client hung"
        late = _post(url, dict(n=1, steps=50, timeout_s=1e-6))
    finally:
        service_module.stop(service)
    for k, kw in enumerate(good):
        code, body = results[("good", k)]
        assert code == 200 and body == sampler.sample(**kw).png_bytes()
    for k, (_, field) in enumerate(bad):
        code, body = results[("bad", k)]
        assert code == 400 and json.loads(body)["field"] == field, body
    assert late[0] == 504 and b"deadline" in late[1]
    sampler.close()
