"""A real tritonserver (the binary bundled in nvidia-pytriton) serving ddpm_sampler.

Both routes are started here on 127.0.0.1 with free ports and stopped by PID: the repository
that ``ddpm-export --triton-repo`` writes, loaded by ``tritonserver --model-repository``, and
``ddpm-serve``. Images from concurrent HTTP and gRPC clients must be byte-identical to a local
Sampler for the same request; bad requests get one-line errors and the server stays ready.
Requests are tiny (n <= 4, steps <= 5 on the bundled 16x16 model) to keep this under a minute.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ddpm.artifact import read
from ddpm.runtime import Sampler, default_model_path

if importlib.util.find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton is not installed (pip install '.[cpu,serve]')",
                allow_module_level=True)
if int(np.__version__.split(".")[0]) >= 2:
    pytest.skip(f"nvidia-pytriton 0.7 needs numpy<2 (its pin) but numpy {np.__version__} is "
                "installed; its Python-backend stub returns empty tensors under numpy 2",
                allow_module_level=True)

import tritonclient.grpc as grpcclient  # noqa: E402  (only after the skip checks)
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from ddpm.serve.launch import TritonServer, free_port  # noqa: E402

pytestmark = [pytest.mark.slow]  # Triton model repositories and server processes

MODEL = default_model_path("ort")
HOST = "127.0.0.1"
#: (seed, num_images, steps, sampler, label, guidance): mixed, so a mix-up shows.
REQUESTS = [
    (0, 1, 2, "ddpm", None, None), (1, 2, 3, "ddim", 4, 2.0), (2, 3, 2, "ddpm", 10, 1.0),
    (3, 4, 5, "ddim", None, 3.0), (4, 1, 4, "ddpm", 7, 0.0), (5, 2, 2, "ddim", 0, 1.5),
    (6, 3, 3, "ddpm", 9, None), (7, 4, 2, "ddim", 2, 3.0),
]


@pytest.fixture(scope="module")
def local() -> Sampler:
    return Sampler.from_path(MODEL, num_threads=1)


def _inputs(mod, req, *, seed_dtype=("UINT64", np.uint64)):
    seed, n, steps, sampler, label, guidance = req
    values = [("seed", seed, seed_dtype), ("num_images", n, ("INT32", np.int32)),
              ("steps", steps, ("INT32", np.int32)), ("sampler", sampler.encode(), ("BYTES", object)),
              ("label", label, ("INT32", np.int32)), ("guidance", guidance, ("FP32", np.float32))]
    out = []
    for name, value, (wire, dtype) in values:
        if value is not None:
            t = mod.InferInput(name, [1, 1], wire)
            t.set_data_from_numpy(np.array([[value]], dtype))
            out.append(t)
    return out


def _infer(port_http: int, port_grpc: int, req, proto: str) -> np.ndarray:
    """One request on a fresh client (tritonclient clients are not shared across threads)."""
    mod = httpclient if proto == "http" else grpcclient
    client = mod.InferenceServerClient(f"{HOST}:{port_http if proto == 'http' else port_grpc}")
    try:
        return client.infer("ddpm_sampler", _inputs(mod, req)).as_numpy("images")
    finally:
        client.close()  # an open keep-alive connection would hold up the server's shutdown


def _want(local: Sampler, req) -> np.ndarray:
    seed, n, steps, sampler, label, guidance = req
    kw = {"guidance": guidance} if guidance is not None else {}
    return local.sample(n, steps=steps, sampler=sampler, seed=seed, labels=label, **kw).images


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://{HOST}:{port}/v2/health/ready", timeout=5) as r:
        return r.status == 200


def _check_concurrent_clients(http_port, grpc_port, local):
    protos = ["http", "grpc"] * 4
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda a: _infer(http_port, grpc_port, *a), zip(REQUESTS, protos, strict=True)))
    for req, images in zip(REQUESTS, got, strict=True):
        assert images.shape == (1, req[1], 16, 16, 1) and images.dtype == np.uint8
        assert np.array_equal(images[0], _want(local, req)), f"request {req} differs"


BAD = [  # (request, seed wire type, words the one-line message must contain)
    ((0, 0, 2, "ddpm", None, None), None, "num_images"),
    ((0, 1, 1001, "ddpm", None, None), None, "1..1000"),
    ((0, 1, 2, "ddpm", 11, None), None, "out of range"),
    ((0, 1, 2, "euler", None, None), None, "euler"),
    ((0, 1, 2, "ddpm", None, None), ("INT32", np.int32), "expects 'UINT64'"),  # wrong dtype
]


def _check_bad_requests(http_port, grpc_port, local):
    client = httpclient.InferenceServerClient(f"{HOST}:{http_port}")
    try:
        for req, seed_dtype, words in BAD:
            kw = {"seed_dtype": seed_dtype} if seed_dtype else {}
            with pytest.raises(InferenceServerException) as e:
                client.infer("ddpm_sampler", _inputs(httpclient, req, **kw))
            msg = e.value.message()
            assert words in msg and "\n" not in msg and "Traceback" not in msg, msg
            assert _ready(http_port)
    finally:
        client.close()
    good = REQUESTS[1]
    assert np.array_equal(_infer(http_port, grpc_port, good, "grpc")[0], _want(local, good))


@pytest.fixture(scope="module")
def repo_server(tmp_path_factory):
    """tritonserver --model-repository on the repository ddpm-export --triton-repo writes."""
    from ddpm.export.triton_repo import write_triton_repo

    repo = tmp_path_factory.mktemp("repo")
    write_triton_repo(MODEL, read(MODEL), repo)
    # The UNet-only model needs the onnxruntime backend, which this wheel lacks: load ours only.
    server = TritonServer(repo, log_path=repo.parent / "tritonserver.log",
                          extra_args=("--model-control-mode", "explicit", "--load-model", "ddpm_sampler"))
    server.start()
    try:
        server.wait_ready(timeout=120)
        yield server
    finally:
        server.stop(timeout=30)


def test_repo_server_gives_8_concurrent_clients_local_images(repo_server, local):
    _check_concurrent_clients(repo_server.http_port, repo_server.grpc_port, local)


def test_repo_server_rejects_bad_requests_and_stays_ready(repo_server, local):
    _check_bad_requests(repo_server.http_port, repo_server.grpc_port, local)


def test_repo_server_shuts_down_cleanly(repo_server):
    pid, workdir = repo_server.proc.pid, repo_server._workdir
    assert repo_server.stop(timeout=30) == 0
    assert not workdir.exists()  # the backend folder it built is gone
    assert "Non-graceful" not in repo_server.log_path.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(("source", "sig"), [("--model", signal.SIGTERM),
                                            ("--repository", signal.SIGINT)])
def test_ddpm_serve_end_to_end(local, tmp_path, source, sig):
    """ddpm-serve on a model file or an exported repository: ready, same images, errors, and
    exit 0 on SIGTERM or SIGINT (Ctrl-C)."""
    from ddpm.export.triton_repo import write_triton_repo

    target = MODEL
    if source == "--repository":
        target = tmp_path / "repo"
        write_triton_repo(MODEL, read(MODEL), target)
    http_port, grpc_port = free_port(HOST), free_port(HOST)
    cmd = [sys.executable, "-m", "ddpm.serve.server", source, str(target),
           "--port", str(http_port), "--grpc-port", str(grpc_port), "--host", HOST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if _ready(http_port):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "ddpm-serve was not ready after 120 s"
            time.sleep(0.3)
        _check_concurrent_clients(http_port, grpc_port, local)
        _check_bad_requests(http_port, grpc_port, local)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read()
        assert "stopped (tritonserver exit code 0)" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_ddpm_serve_bad_model_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    r = subprocess.run([sys.executable, "-m", "ddpm.serve.server", "--model", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
