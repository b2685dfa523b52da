"""The device loop (ORT IO binding over the step graph) against the host loop, on the CPU EP.

The same code runs on the CUDA EP; here it is pinned by what a CPU can show: the images, one
ORT run per step, buffers allocated once per batch, noise uploaded once per batch (or per
chunk), no torch import, and one-line refusals.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm.artifact import read
from ddpm.errors import ArtifactError, BackendError
from ddpm.schedule import SAMPLERS

pytestmark = [pytest.mark.slow]  # step-graph exports

PARITY_ATOL = 1e-4  # images in [-1, 1]: fp32 graph vs float64-then-fp32 numpy step
SAMPLERS_HERE = [s for s in ("ddpm", "ddim", "dpm++2m") if s in SAMPLERS]


def _with_step(src, dst_dir):
    """model.onnx copied to ``dst_dir`` plus its step graph (no torch needed)."""
    from ddpm.export import step_graph

    dst_dir.mkdir(parents=True, exist_ok=True)
    model = dst_dir / "model.onnx"
    shutil.copy(src, model)
    step_graph.write(model, dst_dir / "model_step.onnx", samplers=(("ddpm", 4), ("ddim", 3)),
                        say=lambda _m: None)
    return model


@pytest.fixture(scope="module")
def cond_model(exported, tmp_path_factory):
    return _with_step(exported("ddpm", True)["onnx"], tmp_path_factory.mktemp("dev-cond"))


@pytest.fixture(scope="module")
def uncond_export(make_checkpoint, tmp_path_factory):
    """``ddpm-export --with-step`` itself (the API of it), unconditional model."""
    from ddpm.export import export_checkpoint

    return export_checkpoint(make_checkpoint("ddpm", False), tmp_path_factory.mktemp("dev-uncond"),
                             formats="onnx", with_step=True, step_count=4, log=lambda _m: None)


@pytest.fixture(scope="module")
def uncond_model(uncond_export):
    return uncond_export.paths["onnx"]


def _pair(path):
    from ddpm.runtime import Sampler

    return (Sampler.from_path(path, num_threads=1, loop="host"),
            Sampler.from_path(path, num_threads=1, loop="device"))


@pytest.mark.parametrize("sampler", SAMPLERS_HERE)
def test_device_loop_matches_host_loop_with_and_without_guidance(cond_model, sampler):
    host, dev = _pair(cond_model)
    assert (host.loop, dev.loop) == ("host", "device")
    for guidance in (3.0, 1.0):  # CFG (two model halves) and plain conditional
        kw = dict(steps=6, sampler=sampler, seed=11, guidance=guidance, batch_size=2)
        a, b = host.sample(5, trajectory=True, **kw), dev.sample(5, trajectory=True, **kw)  # 2+2+1
        for name in ("samples", "xt", "x0"):
            err = float(np.abs(getattr(a, name) - getattr(b, name)).max())
            assert err <= PARITY_ATOL, f"{sampler} w={guidance} {name}: {err:.2e}"
        assert np.array_equal(a.images, b.images) or np.abs(
            a.images.astype(int) - b.images.astype(int)).max() <= 1


def test_device_loop_matches_host_loop_unconditional_ddim_eta(uncond_model):
    host, dev = _pair(uncond_model)
    kw = dict(steps=5, sampler="ddim", eta=0.5, seed=2, batch_size=3)
    err = float(np.abs(host.sample(4, **kw).samples - dev.sample(4, **kw).samples).max())
    assert err <= PARITY_ATOL


class _Counting:
    """Session proxy: counts ORT runs of each kind, forwards everything else."""

    def __init__(self, sess):
        self._sess, self.iobinding_runs, self.plain_runs = sess, 0, 0

    def run_with_iobinding(self, *a, **k):
        self.iobinding_runs += 1
        return self._sess.run_with_iobinding(*a, **k)

    def run(self, *a, **k):
        self.plain_runs += 1
        return self._sess.run(*a, **k)

    def __getattr__(self, name):
        return getattr(self._sess, name)


def test_one_ort_run_per_step_buffers_once_per_batch_noise_chunked(cond_model, monkeypatch):
    """8 DDPM steps, 3 batches (2+2+1): 24 runs; 11 OrtValues per batch; with a noise bound
    of 3 steps of 2 samples, noise goes up at steps 0, 3, 6 of a batch of 2 (0, 6 of the last
    batch of 1: 6 steps fit) and nothing else is uploaded per step."""
    import onnxruntime as ort

    from ddpm.runtime.loops import device

    host, dev = _pair(cond_model)
    loop = dev._loop
    per_step = 2 * int(np.prod(dev.image_shape)) * 4
    loop.noise_bytes = 3 * per_step  # 3 steps of a batch of 2
    sessions = []
    real_open = device.DeviceLoop._open_session
    monkeypatch.setattr(device.DeviceLoop, "_open_session",
                        lambda self, key: sessions.append(_Counting(real_open(self, key))) or sessions[-1])
    allocs, uploads = [], []
    real_alloc, real_update = ort.OrtValue.ortvalue_from_shape_and_type, ort.OrtValue.update_inplace
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type",
                        staticmethod(lambda *a, **k: allocs.append(a[0]) or real_alloc(*a, **k)))
    monkeypatch.setattr(ort.OrtValue, "update_inplace",
                        lambda self, arr: uploads.append(arr.shape) or real_update(self, arr))
    kw = dict(steps=8, sampler="ddpm", seed=5, guidance=3.0, batch_size=2)
    got = dev.sample(5, **kw)
    runs = sum(s.iobinding_runs for s in sessions)
    assert runs == 8 * 3 and sum(s.plain_runs for s in sessions) == 0
    assert len(allocs) == 11 * 3  # x, step, prev_x0 pairs + noise, table, timesteps, labels, w
    noise_uploads = [s[:2] for s in uploads if len(s) == 5]
    assert noise_uploads == [(3, 2)] * 6 + [(6, 1)] * 2
    assert len(uploads) == 3 * 8 + 2 + 2 + 1  # 8 per batch at its start + the later noise chunks
    err = float(np.abs(got.samples - host.sample(5, **kw).samples).max())
    assert err <= PARITY_ATOL


def test_device_loop_imports_no_torch(cond_model):
    code = textwrap.dedent(f"""
        import sys
        from ddpm.runtime import Sampler
        s = Sampler.from_path({str(cond_model)!r}, num_threads=1, loop="device")
        r = s.sample(3, steps=3, batch_size=2, trajectory=True)
        assert s.loop == "device" and r.samples.shape == (3, 1, 8, 8)
        bad = sorted(m for m in ("torch", "onnx", "triton") if m in sys.modules)
        print("heavy:", bad)
        sys.exit(1 if bad else 0)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_step_graph_contract_records_the_v2_signature(cond_model):
    import onnx

    c = read(cond_model.with_name("model_step.onnx"))
    info = c.step_graph
    assert c.graph == "step" and info["version"] == 2
    assert info["inputs"] == ["x_t", "step", "noise", "table", "timesteps", "prev_x0",
                              "class_labels", "guidance"]
    assert info["outputs"] == ["x_prev", "x0", "step_next"]
    assert [s.name for s in c.inputs] == info["inputs"]
    ops = {n.op_type for n in onnx.load(str(cond_model.with_name("model_step.onnx"))).graph.node}
    assert not ops & {"Loop", "If", "Scan"}


def test_missing_step_graph_is_one_line_naming_the_export_command(exported, tmp_path):
    from ddpm.runtime import Sampler

    shutil.copy(exported("ddpm", True)["onnx"], tmp_path / "model.onnx")
    with pytest.raises(ArtifactError, match=r"ddpm-export CKPT --with-step") as e:
        Sampler.from_path(tmp_path / "model.onnx", loop="device")
    assert "\n" not in str(e.value)


def _cli(*args):
    from ddpm.runtime.cli import main

    return CliRunner().invoke(main, [*args, "--no-progress"], catch_exceptions=False)


def test_cli_loop_device_equals_loop_host(cond_model, tmp_path):
    outs = {}
    for loop in ("host", "device"):
        npz = tmp_path / f"{loop}.npz"
        r = _cli("--model", str(cond_model), "-n", "3", "--batch-size", "2", "--steps", "4",
                 "--sampler", "ddim", "--loop", loop, "--threads", "1",
                 "--out", str(tmp_path / f"{loop}.png"), "--npz", str(npz))
        assert r.exit_code == 0, r.output
        assert f"({loop} loop)" in r.output
        outs[loop] = np.load(npz)["samples"]
    assert float(np.abs(outs["host"] - outs["device"]).max()) <= PARITY_ATOL


@pytest.mark.parametrize("args, needle", [
    (["--cuda-graph"], "--cuda-graph needs --device cuda"),
    (["--tf32"], "--tf32 needs --device cuda"),
    (["--tensorrt"], "--tensorrt needs --device cuda"),
    (["--device", "cuda"], "CUDAExecutionProvider"),
    (["--loop", "device", "--backend", "torch"], "needs --backend ort"),
    (["--update", "triton"], "--device cuda"),
])
def test_cli_refuses_what_the_provider_or_backend_cannot_honour(cond_model, tmp_path, args, needle):
    import onnxruntime as ort

    if "--device" in args and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    r = _cli("--model", str(cond_model), "-n", "1", "--steps", "2", "--out", str(tmp_path / "x.png"), *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not (tmp_path / "x.png").exists()


def test_device_loop_refuses_non_ort_engines():
    from ddpm.runtime.loops.device import DeviceLoop

    class Fake:
        name, device, path = "openvino", "cpu", "x.xml"

    with pytest.raises(BackendError, match="needs --backend ort"):
        DeviceLoop(Fake())


def test_export_with_step_writes_the_v2_graph(uncond_export):
    res = uncond_export
    c = read(res.paths["step"])
    assert res.paths["step"].name == "model_step.onnx" and c.step_graph["version"] == 2
    rows = [r for rep in res.reports for r in rep.rows if r.backend.startswith("step graph")]
    assert rows and all(r.ok for r in rows)


def test_cuda_graph_bookkeeping_on_the_cpu_ep_pads_keeps_buffers_and_ids_per_binding(cond_model):
    """The --cuda-graph code path minus the capture itself (a CUDA EP feature): last batch
    padded to the full size, buffers kept per shape set across calls (fixed addresses), one
    gpu_graph_id per binding, warm-up runs before the first step; a batch change and a
    guidance change between calls still give the host loop's images."""
    host, dev = _pair(cond_model)
    loop = dev._loop
    loop.cuda_graph = True  # the CPU EP ignores the graph run options; the bookkeeping runs
    seen = {}
    for n, b, w in ((5, 2, 3.0), (3, 3, 3.0), (5, 2, 1.0), (5, 2, 3.0)):
        kw = dict(steps=3, seed=1, batch_size=b, guidance=w)
        err = float(np.abs(host.sample(n, **kw).samples - dev.sample(n, **kw).samples).max())
        assert err <= PARITY_ATOL, (n, b, w, err)
        for key, bufs in loop._buffers.items():
            assert seen.setdefault(key, bufs) is bufs  # never reallocated
    assert sorted(k[:2] for k in loop._buffers) == [(2, 2), (2, 4), (3, 6)]  # (B, model batch)
    ids = [ro.get_run_config_entry("gpu_graph_id") for bufs in loop._buffers.values()
           for ro in bufs.run_options]
    assert len(set(ids)) == len(ids) == 6
