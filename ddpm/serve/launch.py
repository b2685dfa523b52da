"""Start the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel, set up to run ddpm.

Four things the bare binary needs that this module supplies or checks (each found by
experiment with tritonserver 2.51 from nvidia-pytriton 0.7.0):

1. ``LD_LIBRARY_PATH``: the wheel's own shared libraries (``nvidia_pytriton.libs``: libcudart,
   libtritonserver, ...) and, first, this interpreter's ``sysconfig`` LIBDIR. The Python-backend
   stub links ``libpython3.X.so``; without LIBDIR first the dynamic linker picks the system's
   build, which then runs this interpreter's standard library (a different 3.X patch release)
   and fails on load with ``'_thread.RLock' object has no attribute '_recursion_count'``.
2. ``PATH`` starting with this interpreter's folder: the stub resolves ``python3`` on PATH to
   set ``sys.executable``/``sys.prefix``, so a virtualenv's ``site-packages`` (its ``.pth``
   files too, which editable installs need) become importable in the stub -- ``ddpm`` and
   ``onnxruntime`` included. The stub ignores ``PYTHONPATH``, so ``ddpm`` must be installed
   in that environment (``pip install -e .`` counts).
3. A backend folder holding the stub built for this Python version: the wheel ships one stub
   per version beside the backend rather than in it.
4. numpy < 2 in that environment (nvidia-pytriton pins it): the stub's tensors are built for
   the numpy 1.x ABI, and under numpy 2 outputs arrive empty and inputs wrong, silently.
   :func:`check_numpy` turns that into an error before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ddpm.errors import BackendError

INSTALL_HINT = "install it with: pip install 'ddpm-toolkit[serve]' (the nvidia-pytriton wheel)"


def _dist() -> Path:
    """The ``tritonserver`` folder inside the installed pytriton package."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise BackendError(f"Triton Inference Server is not installed; {INSTALL_HINT}")
    dist = Path(spec.origin).parent / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise BackendError(f"{dist} holds no bin/tritonserver; reinstall nvidia-pytriton")
    return dist


def tritonserver_binary() -> Path:
    return _dist() / "bin" / "tritonserver"


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``tritonserver`` and its Python-backend stubs (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libs = _dist().parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR")
    ld = [p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
    return env


def check_numpy() -> None:
    """BackendError unless numpy < 2 (see the module docstring, point 4)."""
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        raise BackendError(
            f"Triton's Python backend (nvidia-pytriton) needs numpy < 2, but numpy "
            f"{np.__version__} is installed; run: pip install 'numpy<2' (or install "
            "'ddpm-toolkit[serve]' into a fresh environment)"
        )


def prepare_backends(workdir: str | os.PathLike) -> Path:
    """``workdir/backends``: the wheel's backends plus the stub for this Python version."""
    dist = _dist()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendError(f"nvidia-pytriton ships no Python-backend stub for Python {version}; "
                           "use a Python version it supports (3.8..3.13)")
    backends = Path(workdir) / "backends"
    (backends / "python").mkdir(parents=True, exist_ok=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file():
            (backends / "python" / item.name).symlink_to(item)
    (backends / "python" / stub.name).symlink_to(stub)
    return backends


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it); the caller binds it right after."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    """One ``tritonserver`` child process serving ``repo`` on ``host`` (loopback by default).

    ``with TritonServer(repo) as server:`` starts it, waits until ``/v2/health/ready`` answers
    200 and stops it (SIGTERM, then SIGKILL after ``stop_timeout``) on exit. Metrics are off, so
    only the HTTP and gRPC ports are opened. The server's log goes to ``log_path`` (default: a
    temp folder removed by :meth:`stop`; errors are quoted in the exceptions raised).
    """

    def __init__(
        self,
        repo: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        log_path: str | os.PathLike | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repo = Path(repo)
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self._workdir = Path(tempfile.mkdtemp(prefix="ddpm-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self) -> list[str]:
        return [
            str(tritonserver_binary()), "--model-repository", str(self.repo),
            "--backend-directory", str(self._workdir / "backends"),
            "--http-address", self.host, "--http-port", str(self.http_port),
            "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
            "--allow-metrics", "false", "--disable-auto-complete-config",
            "--exit-timeout-secs", "10", *self.extra_args,
        ]

    def start(self) -> TritonServer:
        check_numpy()
        prepare_backends(self._workdir)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), env=server_env(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,  # our Ctrl-C is not its Ctrl-C
            )
        return self

    def log_errors(self, limit: int = 3) -> str:
        """The server's last error lines (``E...`` and ``error:``), joined on one line."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errs = [ln.strip() for ln in lines if ln.startswith("E") or ln.startswith("error")]
        return " | ".join(errs[-limit:])

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the server is ready; BackendError if it exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise BackendError(f"tritonserver exited (code {code}) before it was ready: "
                                   f"{self.log_errors() or 'see ' + str(self.log_path)}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise BackendError(f"tritonserver was not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server (it drains in-flight requests), SIGKILL after ``timeout`` s."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: stubs too
                code = self.proc.wait(timeout=10)
        shutil.rmtree(self._workdir, ignore_errors=True)  # the default log goes with it
        return code

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
