"""Fault tests of the runtime (issue 13): bounds before allocation, contracts checked against
the graph at load, non-finite model output, wrong-backend messages, whole-or-nothing outputs.

Each builds its bad input itself (an edited copy of the bundled model, a lying contract, an
injected ENOSPC through :data:`ddpm._io.fault_hook`) and asserts the one-line error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm import artifact
from ddpm.errors import ArtifactError, ConfigError, DDPMError, NonFiniteError

ASSET = Path(artifact.__file__).parent / "assets" / "digits.onnx"
BIN = Path(sys.executable).parent


def _onnx_with(tmp_path: Path, *, contract_changes=None, graph_change=None) -> Path:
    """The bundled digits model with its contract metadata and/or graph edited."""
    import onnx

    model = onnx.load(str(ASSET))
    if contract_changes:
        for prop in model.metadata_props:
            if prop.key == artifact.CONTRACT_KEY:
                d = json.loads(prop.value)
                d.update(contract_changes)
                prop.value = json.dumps(d)
    if graph_change:
        graph_change(model)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _poison(model) -> None:
    """Set one value of the graph's largest initializer to NaN (in place)."""
    from onnx import numpy_helper

    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    arr = numpy_helper.to_array(init).copy()
    arr.reshape(-1)[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))


def _open(path: Path, backend: str = "ort"):
    from ddpm.runtime.sampler import Sampler

    return Sampler.from_path(path, backend, "cpu", num_threads=1)


@pytest.mark.parametrize("eta", [float("inf"), 1e300, 2.0])
def test_ddim_eta_outside_0_1_is_refused(eta):
    s = _open(ASSET)
    with pytest.raises(ConfigError, match="eta"):
        s.plan(2, steps=2, sampler="ddim", eta=eta)


def test_a_plan_of_1e9_images_is_refused_before_allocating():
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # 1e9 labels need 8 GB\n"
        "from ddpm.errors import ConfigError\n"
        "from ddpm.runtime.sampler import Sampler\n"
        "s = Sampler.from_path(None, 'ort', 'cpu', num_threads=1)\n"
        "try:\n"
        "    s.plan(10**9, steps=2)\n"
        "except ConfigError as e:\n"
        "    sys.exit(0 if 'limit' in str(e) else 3)\n"
        "sys.exit(4)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-300:])


def test_ddpm_run_never_leaves_a_grid_without_its_npz(tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from ddpm import _io
    from ddpm.runtime.cli import main

    def fail_npz(event, final):
        if final.suffix == ".npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_npz)
    out = tmp_path / "s.png"
    result = CliRunner().invoke(main, ["-n", "1", "--steps", "1", "--out", str(out),
                                       "--npz", str(tmp_path / "s.npz"), "--no-progress"])
    assert result.exit_code == 1 and not out.exists(), result.output


def test_ddpm_run_uses_the_shared_one_line_command_class():
    from ddpm._cli import OneLineCommand
    from ddpm.runtime.cli import main

    assert isinstance(main, OneLineCommand)


def test_ddpm_bench_uses_the_shared_one_line_command_class():
    from ddpm._cli import OneLineCommand
    from ddpm.bench_cli import main

    assert isinstance(main, OneLineCommand)


def test_ddpm_run_failing_midway_leaves_the_previous_outputs_as_they_were(tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    from ddpm import _io
    from ddpm.runtime.cli import main

    out, npz = tmp_path / "s.png", tmp_path / "s.npz"
    out.write_bytes(b"previous grid")
    npz.write_bytes(b"previous npz")

    def fail_grid_move(event, final):  # the .npz is moved into place first, then this fails
        if event == "move" and final.suffix == ".png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final))

    monkeypatch.setattr(_io, "fault_hook", fail_grid_move)
    result = CliRunner().invoke(main, ["-n", "1", "--steps", "1", "--out", str(out),
                                       "--npz", str(npz), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "none of" in result.output and "unchanged" in result.output
    assert out.read_bytes() == b"previous grid" and npz.read_bytes() == b"previous npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.png"]  # no temp left


@pytest.mark.parametrize("case", ["image size", "int32 timestep", "output name"])
def test_onnx_contract_that_contradicts_the_graph_fails_at_load(tmp_path, case):
    import onnx

    def retype(name: str, elem: int):
        def change(model):
            for i in model.graph.input:
                if i.name == name:
                    i.type.tensor_type.elem_type = elem
        return change

    if case == "image size":
        path = _onnx_with(tmp_path, contract_changes={"image_height": 32, "image_width": 32})
    elif case == "int32 timestep":
        path = _onnx_with(tmp_path, graph_change=retype("timestep", onnx.TensorProto.INT32))
    else:
        outputs = [{**o, "name": "not_in_the_graph"} for o in artifact.read(ASSET).to_dict()[
            "outputs"]]
        path = _onnx_with(tmp_path, contract_changes={"outputs": outputs})
    with pytest.raises(ArtifactError, match="graph"):
        _open(path)


@pytest.mark.parametrize("threads", [0, -1])
def test_threads_below_one_are_refused(threads):
    from ddpm.runtime.sampler import Sampler

    with pytest.raises(ConfigError, match="threads"):
        Sampler.from_path(ASSET, "ort", "cpu", num_threads=threads)


def test_threads_100000_is_one_line_exit_2_not_a_segfault_or_a_hang(tmp_path):
    try:  # refused up front, it takes a second; today it hangs (or segfaults)
        proc = subprocess.run([str(BIN / "ddpm-run"), "--threads", "100000", "-n", "1",
                               "--steps", "1", "--out", str(tmp_path / "s.png"),
                               "--no-progress"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("ddpm-run --threads 100000 still running after 15 s")
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-300:])
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


def test_checkpoint_given_to_the_ort_backend_names_the_right_backend(tmp_path):
    from conftest import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt.pt", "basic")
    with pytest.raises(DDPMError) as e:
        _open(ckpt, "ort")
    message = str(e.value)
    assert "TorchScript" not in message
    assert "--backend torch" in message and "ddpm-export" in message


def _tiny_ts(tmp_path: Path, image_size: int = 16) -> Path:
    """A TorchScript basic model of ``image_size`` whose contract claims 64x64 pixels."""
    import torch

    from ddpm.models.registry import build

    model = build("basic", channels=(8, 8), kernel_size=3, image_size=image_size).eval()
    shape = (1, 1, image_size, image_size)
    ts = torch.jit.trace(model, (torch.zeros(shape), torch.zeros(1, dtype=torch.long)))
    d = artifact.read(ASSET).to_dict()
    d.update(arch="basic", model_config={"channels": [8, 8], "kernel_size": 3},
             image_height=64, image_width=64, num_classes=0, null_label=None,
             inputs=[s for s in d["inputs"] if s["name"] != "class_labels"])
    path = tmp_path / "model.ts"
    torch.jit.save(ts, str(path), _extra_files={artifact.TS_EXTRA_FILE: json.dumps(d)})
    return path


@pytest.mark.parametrize("given, backend, says, fix", [
    ("onnx", "torchscript", "an ONNX graph", "backend 'ort'"),
    ("onnx", "torch", "an ONNX graph", "backend 'ort'"),
    ("ts", "ort", "a TorchScript archive", "backend 'torchscript'"),
    ("ts", "openvino", "a TorchScript archive", "backend 'torchscript'"),
    ("ckpt", "openvino", "a training checkpoint", "ddpm-export"),
    ("ckpt", "torchscript", "a training checkpoint", "--backend torch"),
])
def test_wrong_backend_for_a_file_names_what_it_is_and_what_fits(tmp_path, given, backend, says, fix):
    from conftest import write_checkpoint

    path = {"onnx": lambda: ASSET, "ts": lambda: _tiny_ts(tmp_path),
            "ckpt": lambda: write_checkpoint(tmp_path / "ckpt.pt", "basic")}[given]()
    with pytest.raises(ArtifactError) as e:
        _open(path, backend)
    message = str(e.value)
    assert says in message and fix in message and "\n" not in message, message
    assert e.value.field == "backend"


def test_onnx_graph_with_an_fp16_input_fails_at_load_naming_the_dtype(tmp_path):
    import onnx

    def fp16_sample(model):
        model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16

    path = _onnx_with(tmp_path, graph_change=fp16_sample)
    with pytest.raises(DDPMError, match="float16") as e:
        _open(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["image size", "output name"])
def test_openvino_checks_the_contract_against_the_graph_at_load(tmp_path, case):
    pytest.importorskip("openvino")
    if case == "image size":
        path = _onnx_with(tmp_path, contract_changes={"image_height": 32, "image_width": 32})
    else:
        outputs = [{**o, "name": "not_in_the_graph"} for o in artifact.read(ASSET).to_dict()[
            "outputs"]]
        path = _onnx_with(tmp_path, contract_changes={"outputs": outputs})
    with pytest.raises(ArtifactError, match="graph"):
        _open(path, "openvino")


def test_nan_initializer_in_the_onnx_graph_is_an_error_not_garbage_images(tmp_path):
    s = _open(_onnx_with(tmp_path, graph_change=_poison))
    with pytest.raises(NonFiniteError):
        s.run(s.plan(2, steps=2, labels=1))


def test_nan_weights_under_the_device_loop_are_an_error_not_garbage_images(tmp_path):
    """The device loop keeps x on the device, so it checks each batch's final samples."""
    import onnx

    from ddpm.export import step_graph
    from ddpm.runtime.sampler import Sampler

    path = _onnx_with(tmp_path)
    step = tmp_path / "model_step.onnx"
    step_graph.write(path, step, samplers=(("ddim", 3),), say=lambda _m: None)
    for f in (path, step):  # the step graph embeds the model: poison both the same way
        m = onnx.load(str(f))
        _poison(m)
        onnx.save(m, str(f))
    s = Sampler.from_path(path, num_threads=1, loop="device")
    assert s.loop == "device"
    with pytest.raises(NonFiniteError, match="device loop's 3-step samples hold NaN or Inf"):
        s.sample(2, steps=3, sampler="ddim", labels=1)


def test_torchscript_whose_contract_lies_about_the_image_size_fails_at_load(tmp_path):
    import torch

    from ddpm.models.registry import build

    model = build("basic", channels=(8, 8), kernel_size=3, image_size=16).eval()
    ts = torch.jit.trace(model, (torch.zeros(1, 1, 16, 16), torch.zeros(1, dtype=torch.long)))
    d = artifact.read(ASSET).to_dict()
    d.update(arch="basic", model_config={"channels": [8, 8], "kernel_size": 3},
             image_height=64, image_width=64, num_classes=0, null_label=None,
             inputs=[s for s in d["inputs"] if s["name"] != "class_labels"])
    artifact.Contract.from_dict(d)  # the contract itself is self-consistent
    path = tmp_path / "model.ts"
    torch.jit.save(ts, str(path), _extra_files={artifact.TS_EXTRA_FILE: json.dumps(d)})
    with pytest.raises(ArtifactError, match="16"):
        _open(path, "torchscript")


def test_api_loop_errors_name_arguments_and_the_cli_shows_them_as_flags():
    from ddpm.errors import BackendError
    from ddpm.runtime.cli import as_flags
    from ddpm.runtime.loops import check_backend

    with pytest.raises(BackendError) as e:
        check_backend("torch", "device")
    assert e.value.field == "loop" and "--" not in str(e.value)
    assert "loop='device'" in str(e.value) and "backend='ort'" in str(e.value)
    shown = as_flags(str(e.value))
    assert "--loop device" in shown and "needs --backend ort" in shown and "--backend torch" in shown


def test_bf16_is_a_compute_precision_the_ort_engine_refuses_in_one_line():
    from ddpm.errors import BackendError

    with pytest.raises(BackendError, match="openvino") as e:
        _open_with(ASSET, "ort", precision="bf16")
    assert e.value.field == "precision" and "\n" not in str(e.value)


def test_bf16_reaches_the_openvino_engine_as_its_compute_precision():
    pytest.importorskip("openvino")
    from ddpm.errors import BackendError
    from ddpm.runtime.engines.openvino import native_bf16

    if native_bf16():
        s = _open_with(ASSET, "openvino", precision="bf16")
        assert s.engine.precision == "bf16"
        assert np.isfinite(s.sample(2, steps=2).samples).all()
    else:  # the engine itself refuses (its capability check), not the file resolver
        with pytest.raises(BackendError, match="needs native BF16") as e:
            _open_with(ASSET, "openvino", precision="bf16")
        assert e.value.field == "precision"


def _open_with(path: Path, backend: str, **options):
    from ddpm.runtime.sampler import Sampler

    return Sampler.from_path(path, backend, "cpu", num_threads=1, **options)
