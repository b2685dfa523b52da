"""``ddpm-serve``: one command serving whole sampling over HTTP and gRPC (KServe v2 protocol).

It writes a throw-away model repository holding only the ``ddpm_sampler`` model (pointing at
the model file in place, nothing copied) -- or, with ``--repository R``, serves the
``ddpm_sampler`` of a repository ``ddpm-export --triton-repo R`` wrote -- starts the
``tritonserver`` bundled in
``nvidia-pytriton`` with the environment its Python backend needs (:mod:`ddpm.serve.launch`),
and stops it on SIGINT/SIGTERM. The served model is the same ``ddpm_sampler`` that
``ddpm-export --triton-repo`` writes, so a request gets the same images (and the same
errors) from either.

The repository route rather than a PyTriton-bound Python function: PyTriton answers every
request of a dynamic batch with the error when one request raises, and sends clients the
full Python traceback; the Python-backend model answers each request on its own with our one
line, and runs the sampler inside the stub without an extra process hop.
"""

from __future__ import annotations

import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

from ddpm._cli import OneLineCommand, friendly_errors
from ddpm.errors import BackendError, ConfigError

READY_TIMEOUT_S = 120.0


def _check_port(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; "
                              f"pass another {flag} or --host", field=flag) from None


def _model_file(model: str | None) -> Path:
    from ddpm.runtime import default_model_path

    p = Path(default_model_path("ort") if model is None else model)
    return (p / "model.onnx" if p.is_dir() else p).resolve()


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default=None, help="model.onnx (or its folder). Default: the bundled digits model.")
@click.option("--repository", default=None, type=click.Path(path_type=Path), help="Serve REPO/ddpm_sampler written by ddpm-export --triton-repo REPO (its config.pbtxt sets device, instances, workers).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int, help="HTTP port.")
@click.option("--grpc-port", default=8001, show_default=True, type=int, help="gRPC port.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]), help="ONNX Runtime device of each instance.")
@click.option("--instances", default=1, show_default=True, type=int, help="Model instances (processes), each with its own session.")
@click.option("--workers", default=None, type=int, help="Requests run at once per instance (default 32, the dynamic batch size).")
@click.option("--threads", default=1, show_default=True, type=int, help="ONNX Runtime threads per request.")
@click.option("--max-images", default=64, show_default=True, type=int, help="Largest num_images one request may ask for.")
@friendly_errors
def main(model, repository, host, port, grpc_port, device, instances, workers, threads,
         max_images) -> None:
    """Serve the sampler: POST seed/num_images/... to /v2/models/ddpm_sampler/infer."""
    from ddpm.artifact import read
    from ddpm.serve.launch import TritonServer, check_numpy, tritonserver_binary
    from ddpm.serve.repository import SAMPLER_MODEL, write_sampler_model

    for name, value in (("--instances", instances), ("--threads", threads),
                        ("--max-images", max_images), ("--workers", workers)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be 1 or more, got {value}", field=name)
    if repository is not None:
        if model is not None:
            raise ConfigError("pass --model or --repository, not both", field="--repository")
        path = repository / SAMPLER_MODEL / "1" / "model.onnx"
        if not (repository / SAMPLER_MODEL / "config.pbtxt").is_file():
            raise ConfigError(f"{str(repository)!r} holds no {SAMPLER_MODEL}/config.pbtxt; pass "
                              "a folder written by ddpm-export --triton-repo", field="--repository")
    else:
        path = _model_file(model)
    contract = read(path)  # ArtifactError (exit 2) for a missing file or a foreign model
    tritonserver_binary()  # "not installed" first: it explains a numpy 2 beside it too
    check_numpy()
    _check_port(host, port, "--port")
    _check_port(host, grpc_port, "--grpc-port")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workdir = Path(tempfile.mkdtemp(prefix="ddpm-serve-"))
    server = None
    try:
        repo, extra = repository, ("--model-control-mode", "explicit", "--load-model", SAMPLER_MODEL)
        if repository is None:  # the options below shape the generated config only
            repo, extra = workdir / "repo", ()
            write_sampler_model(
                contract, repo, model_path=str(path), instances=instances,
                kind="KIND_GPU" if device == "cuda" else "KIND_CPU", workers=workers,
                num_threads=threads, max_images=max_images,
            )
        # The repository's other models (the UNet on the onnxruntime backend) need backends
        # this wheel lacks, so only ddpm_sampler is loaded from an exported repository.
        server = TritonServer(repo, host=host, http_port=port, grpc_port=grpc_port,
                              log_path=workdir / "tritonserver.log", extra_args=extra).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not server.is_ready() and not stop.is_set():
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise BackendError(f"tritonserver did not become ready: {server.log_errors()}")
            stop.wait(0.2)
        if not stop.is_set():
            click.echo(f"ddpm-serve: {SAMPLER_MODEL} ({path.name}, {device}) on "
                       f"http://{host}:{port} and grpc {host}:{grpc_port}; Ctrl-C stops", err=True)
        while not stop.is_set():
            if server.proc.poll() is not None:
                click.echo(f"error: tritonserver exited with code {server.proc.returncode}: "
                           f"{server.log_errors()}", err=True)
                sys.exit(1)
            stop.wait(0.5)
        code = server.stop()
        server = None
        click.echo(f"ddpm-serve: stopped (tritonserver exit code {code})", err=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
