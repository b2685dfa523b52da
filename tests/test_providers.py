"""ORT provider handling: what each CUDA option becomes, and the refusals, with a stand-in
``onnxruntime`` whose provider list we choose (the CI machine has only the CPU EP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm.errors import BackendError
from ddpm.runtime import ort_session
from ddpm.runtime.ort_session import check_providers, providers_for


class FakeOrt:
    def __init__(self, *providers: str) -> None:
        self.providers = ["CPUExecutionProvider", *providers]
        self.preloaded = 0

    def get_available_providers(self) -> list[str]:
        return list(self.providers)

    def preload_dlls(self) -> None:
        self.preloaded += 1


class FakeSession:
    def __init__(self, *used: str) -> None:
        self.used = list(used)

    def get_providers(self) -> list[str]:
        return self.used


def _cuda_opts(providers: list) -> dict:
    return next(opts for p, opts in (x for x in providers if isinstance(x, tuple)) if p == "CUDAExecutionProvider")


def test_tf32_is_off_unless_asked_and_cuda_graph_is_passed_to_the_cuda_ep():
    ort = FakeOrt("CUDAExecutionProvider")
    assert _cuda_opts(providers_for(ort, "cuda"))["use_tf32"] == "0"
    assert _cuda_opts(providers_for(ort, "cuda", tf32=True))["use_tf32"] == "1"
    assert "enable_cuda_graph" not in _cuda_opts(providers_for(ort, "cuda"))
    assert _cuda_opts(providers_for(ort, "cuda", cuda_graph=True))["enable_cuda_graph"] == "1"


def test_tensorrt_gets_an_engine_cache_next_to_the_model_and_comes_first(tmp_path):
    ort = FakeOrt("CUDAExecutionProvider", "TensorrtExecutionProvider")
    provs = providers_for(ort, "cuda", tensorrt=True, trt_cache=tmp_path / "trt_cache")
    name, opts = provs[0]
    assert name == "TensorrtExecutionProvider"
    assert opts["trt_engine_cache_enable"] == "1"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "trt_cache")
    assert opts["trt_fp16_enable"] == "0"  # fp32 unless asked: same images as the CUDA EP


@pytest.mark.parametrize("kw, needle", [
    ({"cuda_graph": True}, "--cuda-graph needs --device cuda"),
    ({"tensorrt": True}, "--tensorrt needs --device cuda"),
    ({"tf32": True}, "--tf32 needs --device cuda"),
])
def test_cuda_only_options_are_refused_on_cpu(kw, needle):
    with pytest.raises(BackendError, match=needle) as e:
        providers_for(FakeOrt("CUDAExecutionProvider"), "cpu", **kw)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_missing_cuda_or_tensorrt_provider_names_the_fix():
    with pytest.raises(BackendError, match=r"CUDAExecutionProvider.*ddpm-toolkit\[gpu\]"):
        providers_for(FakeOrt(), "cuda")
    with pytest.raises(BackendError, match=r"--tensorrt needs .*TensorrtExecutionProvider") as e:
        providers_for(FakeOrt("CUDAExecutionProvider"), "cuda", tensorrt=True)
    assert e.value.field == "tensorrt"


def test_a_silent_cpu_fallback_after_creation_is_an_error():
    p = Path("m.onnx")
    check_providers(FakeSession("CUDAExecutionProvider", "CPUExecutionProvider"), p, "cuda")
    with pytest.raises(BackendError, match=r"fell back to CPUExecutionProvider without CUDAExecutionProvider"):
        check_providers(FakeSession("CPUExecutionProvider"), p, "cuda")
    with pytest.raises(BackendError, match="without TensorrtExecutionProvider"):
        check_providers(FakeSession("CUDAExecutionProvider", "CPUExecutionProvider"), p, "cuda", tensorrt=True)
    check_providers(FakeSession("CPUExecutionProvider"), p, "cpu")


def test_cuda_sessions_preload_the_cuda_libraries_before_creation(monkeypatch):
    ort = FakeOrt("CUDAExecutionProvider")
    ort_session.preload_cuda(ort)
    assert ort.preloaded == 1
    ort_session.preload_cuda(object())  # an ORT without preload_dlls: nothing to do


def test_library_load_failure_is_reported_as_missing_libraries_not_a_corrupt_model(monkeypatch, tmp_path):
    class Ort(FakeOrt):
        SessionOptions = __import__("onnxruntime").SessionOptions
        GraphOptimizationLevel = __import__("onnxruntime").GraphOptimizationLevel
        ExecutionMode = __import__("onnxruntime").ExecutionMode

        def InferenceSession(self, *a, **k):  # noqa: N802 - ORT's name
            raise RuntimeError("Failed to load library libonnxruntime_providers_cuda.so with error: "
                               "libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(ort_session, "import_ort", lambda: Ort("CUDAExecutionProvider"))
    with pytest.raises(BackendError, match=r"CUDA / cuDNN libraries are missing") as e:
        ort_session.create_session(tmp_path / "m.onnx", None, device="cuda")
    assert "corrupt" not in str(e.value)
