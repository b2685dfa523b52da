"""The OpenVINO engine: same outputs as ONNX Runtime, thread-safe, bad input as one-line errors.

Parity is checked against the ORT engine on the same model.onnx and the same inputs: fp32
within 1e-4 per call and 1e-3 over a sampled trajectory (shared host loop, same noise).
bf16 needs a CPU with native bf16 (AMX / AVX512-BF16); where it is absent the refusal is
tested and the bf16 accuracy test skips saying so.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from ddpm.errors import ArtifactError, BackendError  # noqa: E402
from ddpm.runtime.engines import openvino as ovmod  # noqa: E402
from ddpm.runtime.engines.openvino import OpenVinoEngine  # noqa: E402

pytestmark = [pytest.mark.slow]  # OpenVINO compilation

BUNDLED = Path(ovmod.__file__).resolve().parents[2] / "assets" / "digits.onnx"


_bf16_native = ovmod.native_bf16


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """Compiled-model caches and probe results go to a per-test folder, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ddpm"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A copy of the bundled conditional digits model (16x16, 10 classes) in a writable folder."""
    import shutil

    return Path(shutil.copy(BUNDLED, tmp_path_factory.mktemp("model") / "model.onnx"))


@pytest.fixture(scope="module")
def ov_engine(model):
    e = OpenVinoEngine(model, num_threads=1)
    yield e
    e.close()


def _inputs(b: int, seed: int, shape=(1, 16, 16), k: int = 10):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, *shape)).astype(np.float32)
    t = rng.integers(0, 1000, b).astype(np.int64)
    return x, t, rng.integers(0, k + 1, b).astype(np.int64)  # label k is the null label


def _ort_run(path: Path, x, t, y) -> np.ndarray:
    """The reference: a plain single-thread onnxruntime session on the same file."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"sample": x, "timestep": t, "class_labels": y})[0]


def test_engine_follows_the_protocol(ov_engine, model):
    from ddpm.runtime.engines.base import Engine

    assert isinstance(ov_engine, Engine)
    assert (ov_engine.name, ov_engine.device, ov_engine.path) == ("openvino", "cpu", model)
    assert ov_engine.contract.input_names == ("sample", "timestep", "class_labels")


def test_each_call_matches_ort_within_1e4(ov_engine, model):
    for b in (1, 3, 16):
        x, t, y = _inputs(b, seed=b)
        got = ov_engine.run(x, t, y)
        assert got.dtype == np.float32 and got.shape == (b, 1, 16, 16)
        np.testing.assert_allclose(got, _ort_run(model, x, t, y), atol=1e-4, rtol=0)


def test_trajectory_matches_ort_within_1e3(model):
    from ddpm.runtime.sampler import Sampler

    kw = dict(steps=12, seed=7, batch_size=3, guidance=2.0, sampler="ddpm", eta=0.0)
    want = Sampler.from_path(model, "ort", num_threads=1).sample(5, **kw)
    got = Sampler.from_path(model, "openvino", num_threads=1).sample(5, **kw)
    assert got.samples.shape == want.samples.shape == (5, 1, 16, 16)
    np.testing.assert_allclose(got.samples, want.samples, atol=1e-3, rtol=0)


def test_one_compiled_model_per_batch_size_lru_bounded(model, monkeypatch):
    monkeypatch.setattr(ovmod, "MAX_COMPILED", 2)
    e = OpenVinoEngine(model, num_threads=1, cache=False)
    x, t, y = _inputs(3, seed=1)
    for b in (1, 2, 1, 3):
        e.run(x[:b], t[:b], y[:b])
    assert list(e._compiled) == [(1, 1), (1, 3)]  # 2 was least recently used; 1 moved to the end
    for c in e._compiled.values():
        shapes = [tuple(i.get_shape()) for i in c.compiled.inputs]
        assert shapes[0][0] == shapes[1][0] == shapes[2][0]  # static batch on every input
    e.close()
    assert not e._compiled
    with pytest.raises(BackendError, match="engine was closed"):
        e.run(x[:1], t[:1], y[:1])


def test_batch_split_across_threads_matches_one_thread(ov_engine, model):
    """2 threads: B >= 2 runs as single-thread chunks side by side, B == 1 on one 2-thread
    compiled model; the outputs equal the 1-thread engine's within float rounding."""
    two = OpenVinoEngine(model, num_threads=2, cache=False)
    for b in (5, 1, 4):
        x, t, y = _inputs(b, seed=10 + b)
        np.testing.assert_allclose(two.run(x, t, y), ov_engine.run(x, t, y), atol=1e-5, rtol=0)
    assert set(two._compiled) == {(1, 2), (1, 3), (2, 1)}  # 5 -> 2 + 3, 1 -> whole, 4 -> 2 + 2
    # Chunk models: one single-thread stream per worker, so the chunks of a batch run side by
    # side instead of queueing on one stream; the single image: one stream with both threads.
    layout = {k: (int(c.compiled.get_property("NUM_STREAMS")), int(c.compiled.get_property("INFERENCE_NUM_THREADS")))
              for k, c in two._compiled.items()}
    assert layout == {(1, 2): (2, 2), (1, 3): (2, 2), (2, 1): (1, 2)}
    # 5 -> 2 + 3 runs on two models at once: pinned, both first streams would share a core.
    assert not any(bool(two._compiled[k].compiled.get_property("ENABLE_CPU_PINNING")) for k in ((1, 2), (1, 3)))
    unsplit = OpenVinoEngine(model, num_threads=2, cache=False, split=False)
    unsplit.run(*_inputs(4, seed=0))
    assert set(unsplit._compiled) == {(2, 4)}
    two.close()
    unsplit.close()


def test_precision_pinned_to_f32_and_threads_and_latency_hint(ov_engine):
    x, t, y = _inputs(2, seed=2)
    ov_engine.run(x, t, y)
    compiled = ov_engine._compiled[(1, 2)].compiled
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")) in ("LATENCY", "PerformanceMode.LATENCY")


def test_concurrent_calls_match_serial_calls(ov_engine):
    _check_concurrent(ov_engine)


def test_concurrent_calls_on_split_streams_match_serial_calls(model):
    """2 threads: every batch of >= 2 runs as chunks on two-stream compiled models."""
    e = OpenVinoEngine(model, num_threads=2, cache=False)
    _check_concurrent(e)
    e.close()


def _check_concurrent(ov_engine) -> None:
    cases = [_inputs(b, seed=s) for s, b in enumerate((2, 3, 2, 1, 3, 2, 1, 2))]
    serial = [ov_engine.run(*c) for c in cases]
    got: list = [None] * len(cases)
    barrier = threading.Barrier(len(cases))

    def work(k: int) -> None:
        barrier.wait()  # start together so the calls overlap on shared compiled models
        for _ in range(3):
            got[k] = ov_engine.run(*cases[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(cases))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(len(cases)):
        np.testing.assert_array_equal(got[k], serial[k])
    # requests were pooled, not one per call: at most one per concurrent caller
    assert sum(len(c.idle) for c in ov_engine._compiled.values()) <= len(cases)


def test_cache_dir_beside_a_writable_model_never_in_the_package(user_cache, model):
    assert ovmod.cache_dir_for(model) == model.parent / ovmod.CACHE_SUBDIR
    assert ovmod.cache_dir_for(BUNDLED) == user_cache / "openvino"


@pytest.mark.skipif(_bf16_native(), reason="this CPU has native bf16: the refusal cannot happen")
def test_bf16_refused_without_native_bf16(model):
    with pytest.raises(BackendError, match=r"--precision bf16 needs native BF16.*drop --precision") as e:
        OpenVinoEngine(model, compute_precision="bf16")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(_bf16_native(), reason="this CPU has native bf16: no silent fallback to catch")
def test_bf16_silent_fallback_is_refused(model, monkeypatch):
    """OpenVINO quietly compiles f32 when told bf16 on a CPU without it; were the capability
    check ever wrong, the engine still refuses instead of reporting bf16 it does not run."""
    monkeypatch.setattr(ovmod, "cpu_capabilities", lambda core: ("FP32", "BF16"))
    e = OpenVinoEngine(model, compute_precision="bf16", cache=False)
    with pytest.raises(BackendError, match=r"compiled .* for f32, not the bf16"):
        e.run(*_inputs(1, seed=0))


@pytest.mark.skipif(not _bf16_native(), reason="bf16 not runnable here: this CPU lacks native bf16 "
                    "(OPTIMIZATION_CAPABILITIES has no BF16)")
def test_bf16_runs_close_to_f32(model):
    x, t, y = _inputs(4, seed=3)
    want = OpenVinoEngine(model, num_threads=1).run(x, t, y)
    e = OpenVinoEngine(model, compute_precision="bf16", num_threads=1)
    got = e.run(x, t, y)
    assert e._compiled[(1, 4)].compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    np.testing.assert_allclose(got, want, atol=0.1, rtol=0)


def _conv_precisions(engine) -> set[str]:
    """The runtime precisions of the convolutions in ``engine``'s compiled models."""
    out = set()
    for c in engine._compiled.values():
        for op in c.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) == "Convolution":
                out.add(info["runtimePrecision"].astype(str))
    return out


def test_int8_graph_runs_int8_convolutions_close_to_fp32():
    """--backend openvino --precision int8 opens digits_int8.onnx (the QDQ graph of ddpm-export
    --int8) and its convolutions run on int8 kernels; outputs stay near the fp32 graph's
    (relative RMS: the int8 export's own check against torch is 0.02-0.03)."""
    from ddpm.runtime.engines import open_engine

    e = open_engine(BUNDLED, "openvino", precision="int8", num_threads=1, cache=False)
    ref = open_engine(BUNDLED, "ort", num_threads=1)
    assert e.path.name == "digits_int8.onnx"
    x, t, y = _inputs(4, seed=5)
    got, want = e.run(x, t, y), ref.run(x, t, y)
    rel = float(np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)))
    assert 0 < rel < 0.06, rel
    assert _conv_precisions(e) & {"u8", "i8"}, _conv_precisions(e)
    fp32 = open_engine(BUNDLED, "openvino", num_threads=1, cache=False)
    fp32.run(x, t, y)
    assert _conv_precisions(fp32) == {"f32"}
    for engine in (e, ref, fp32):
        engine.close()


def test_unknown_precision_and_cuda_refused(model):
    with pytest.raises(BackendError, match="no precision 'fp8'"):
        OpenVinoEngine(model, compute_precision="fp8")
    with pytest.raises(BackendError, match="CPU only.*--device cpu"):
        OpenVinoEngine(model, device="cuda")


def test_missing_package_names_the_extra(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(BackendError, match=r'pip install "ddpm-toolkit\[openvino\]"'):
        OpenVinoEngine(model)


def _with_contract(model: Path, out: Path, graph) -> Path:
    """``graph`` saved as an ONNX file carrying ``model``'s ddpm contract."""
    onnx = pytest.importorskip("onnx")

    from ddpm import artifact

    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(m, {artifact.CONTRACT_KEY: artifact.read(model).to_json()})
    onnx.save(m, out)
    return out


def _vi(name: str, elem: int, shape: list):
    import onnx

    return onnx.helper.make_tensor_value_info(name, elem, shape)


def test_model_openvino_cannot_read_is_one_line_artifact_error(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T

    g = onnx.helper.make_graph(
        [onnx.helper.make_node("NoSuchOp", ["sample", "timestep", "class_labels"], ["model_output"],
                               domain="ddpm.nowhere")],
        "bad", [_vi("sample", T.FLOAT, ["batch", 1, 16, 16]), _vi("timestep", T.INT64, ["batch"]),
                _vi("class_labels", T.INT64, ["batch"])],
        [_vi("model_output", T.FLOAT, ["batch", 1, 16, 16])],
    )
    bad = _with_contract(model, tmp_path / "model.onnx", g)
    with pytest.raises(ArtifactError, match="OpenVINO cannot (read|compile) this model") as e:
        OpenVinoEngine(bad, cache=False).run(*_inputs(1, seed=0))
    assert "\n" not in str(e.value) and "--backend ort" in str(e.value)


def test_graph_inputs_checked_against_the_contract(model, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto as T

    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["model_output"])], "renamed",
        [_vi("x", T.FLOAT, ["batch", 1, 16, 16])], [_vi("model_output", T.FLOAT, ["batch", 1, 16, 16])],
    )
    edited = _with_contract(model, tmp_path / "model.onnx", g)
    with pytest.raises(ArtifactError, match=r"graph inputs \('x',\).*differ from its contract"):
        OpenVinoEngine(edited)


def test_torchscript_file_refused(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.ts", "w") as z:  # what torch.jit.save writes: a zip
        z.writestr("model/data.pkl", b"")
    with pytest.raises(ArtifactError, match="TorchScript archive"):
        OpenVinoEngine(tmp_path / "model.ts")


def test_cli_openvino_matches_ort_images(model, tmp_path):
    outs = {}
    for backend in ("ort", "openvino", "auto"):
        npz = tmp_path / f"{backend}.npz"
        r = subprocess.run(
            [sys.executable, "-m", "ddpm.runtime.cli", "--model", str(model), "--backend", backend,
             "--steps", "6", "-n", "4", "--threads", "1", "--out", str(tmp_path / f"{backend}.png"),
             "--npz", str(npz), "--no-progress"], capture_output=True, text=True, timeout=300,
        )
        assert r.returncode == 0, r.stderr
        assert f"{backend}/cpu" in r.stdout
        outs[backend] = np.load(npz)["samples"]
    np.testing.assert_allclose(outs["openvino"], outs["ort"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(outs["auto"], outs["ort"], atol=1e-3, rtol=0)


def test_cli_bf16_refusal_is_exit_2(model, tmp_path):
    if _bf16_native():
        pytest.skip("this CPU has native bf16: --precision bf16 is accepted here")
    r = subprocess.run(
        [sys.executable, "-m", "ddpm.runtime.cli", "--model", str(model), "--backend", "openvino",
         "--precision", "bf16", "--steps", "2", "-n", "1", "--out", str(tmp_path / "a.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --precision bf16 needs native BF16") and r.stderr.count("\n") == 1


def test_probe_picks_the_faster_engine_and_caches_it(model, user_cache):
    import time

    from ddpm import artifact
    from ddpm.runtime import probe

    contract = artifact.read(model)
    calls = {"slow": 0, "fast": 0}

    def make(name: str, delay: float):
        def run(x, t, y):
            calls[name] += 1
            time.sleep(delay)
            return x
        return run

    cands = {"slow": make("slow", 0.02), "fast": make("fast", 0.0)}
    key = probe.probe_key(model, 4, 1)
    assert probe.choose(cands, contract, 4, key)[0] == "fast"
    assert calls == {"slow": 1 + probe.PROBE_CALLS, "fast": 1 + probe.PROBE_CALLS}
    assert probe.choose(cands, contract, 4, key) == ("fast", {})  # cached: nothing timed
    assert calls["slow"] == 1 + probe.PROBE_CALLS
    rec = __import__("json").loads(probe.cache_path().read_text())[key]
    assert rec["choice"] == "fast" and rec["ms_per_call"]["slow"] >= 20
    assert probe.cache_path().parent == user_cache
    # another batch, or the same file rewritten, is another key
    assert probe.probe_key(model, 8, 1) != key and probe.probe_key(model, 4, 2) != key


def test_unreadable_probe_cache_is_ignored(model, user_cache):
    from ddpm.runtime import probe

    user_cache.mkdir(parents=True)
    probe.cache_path().write_text("{not json")
    assert probe.cached_choice("k", {"ort": None}) is None
    probe.store_choice("k", {"choice": "ort"})
    assert probe.cached_choice("k", {"ort": None}) == "ort"
    assert probe.cached_choice("k", {"openvino": None}) is None  # a winner no longer offered


def test_auto_engine_matches_ort_and_records_its_choice(model, user_cache):
    from ddpm.runtime.engines.auto import AutoEngine

    e = AutoEngine(model, num_threads=1)
    assert set(e.engines) == {"ort", "openvino"}
    for b in (1, 4):
        x, t, y = _inputs(b, seed=b)
        np.testing.assert_allclose(e.run(x, t, y), _ort_run(model, x, t, y), atol=1e-4, rtol=0)
        assert e.choices[b] in ("ort", "openvino") and set(e.probes[b]) == {"ort", "openvino"}
    again = AutoEngine(model, num_threads=1)
    again.run(*_inputs(4, seed=0))
    assert again.choices[4] == e.choices[4] and again.probes[4] == {}  # from the cache
    e.close()
    again.close()


def test_cli_without_openvino_names_the_extra_exit_2(model, tmp_path):
    code = "import sys; sys.modules['openvino'] = None; from ddpm.runtime.cli import main; main()"
    r = subprocess.run(
        [sys.executable, "-c", code, "--model", str(model), "--backend", "openvino", "--steps", "2",
         "-n", "1", "--out", str(tmp_path / "a.png")], capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert 'pip install "ddpm-toolkit[openvino]"' in r.stderr
    assert not (tmp_path / "a.png").exists()


def test_cli_bf16_with_another_backend_refused(model, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ddpm.runtime.cli", "--model", str(model), "--precision", "bf16",
         "--steps", "2", "-n", "1", "--out", str(tmp_path / "a.png")], capture_output=True, text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "--precision bf16 needs --backend openvino" in r.stderr


def _forked_child(engine, inputs, want, q) -> None:
    q.put(float(np.abs(engine.run(*inputs) - want).max()))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork() is POSIX only")
def test_forked_child_recompiles_and_matches(model):
    import multiprocessing as mp

    e = OpenVinoEngine(model, num_threads=1, cache=False)
    inputs = _inputs(2, seed=4)
    want = e.run(*inputs)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_forked_child, args=(e, inputs, want, q))
    p.start()
    p.join(120)
    assert p.exitcode == 0 and q.get(timeout=5) == 0.0
    assert (1, 2) in e._compiled  # the parent's compiled model is untouched
