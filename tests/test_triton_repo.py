"""The ddpm_sampler Triton model without a server: config.pbtxt against Triton's own schema,
request validation, and TritonPythonModel.execute with a stand-in for the backend utils.

The same model served by a real tritonserver is tested in test_serve.py.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from test_export_variants import _model_config_pb2

from ddpm.artifact import read
from ddpm.errors import ConfigError
from ddpm.runtime import Sampler, default_model_path
from ddpm.serve.requests import INPUTS, RequestRunner, error_message, parse_rows

pytestmark = [pytest.mark.slow]  # Triton model repository exports

MODEL = default_model_path("ort")  # bundled 16x16 digits model, 10 classes, T=1000


@pytest.fixture(scope="module")
def sampler() -> Sampler:
    return Sampler.from_path(MODEL, num_threads=1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from ddpm.export.triton_repo import write_triton_repo

    root = tmp_path_factory.mktemp("triton")
    write_triton_repo(MODEL, read(MODEL), root)
    return root


def test_sampler_config_parses_with_the_official_schema(repo):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    cfg = text_format.Parse((repo / "ddpm_sampler" / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert cfg.name == "ddpm_sampler" and cfg.backend == "python"
    assert cfg.max_batch_size > 0 and cfg.HasField("dynamic_batching")
    types_ = {i.name: (i.data_type, list(i.dims), i.optional) for i in cfg.input}
    assert types_ == {
        "seed": (pb2.TYPE_UINT64, [1], False), "num_images": (pb2.TYPE_INT32, [1], False),
        "steps": (pb2.TYPE_INT32, [1], True), "sampler": (pb2.TYPE_STRING, [1], True),
        "label": (pb2.TYPE_INT32, [1], True), "guidance": (pb2.TYPE_FP32, [1], True),
        "eta": (pb2.TYPE_FP32, [1], True),
    }
    (out,) = cfg.output
    assert (out.name, out.data_type, list(out.dims)) == ("images", pb2.TYPE_UINT8, [-1, 16, 16, 1])
    (group,) = cfg.instance_group
    assert group.kind == pb2.ModelInstanceGroup.KIND_CPU and group.count == 1
    assert cfg.parameters["model_path"].string_value == "model.onnx"
    assert cfg.parameters["num_threads"].string_value == "1"


def test_repo_holds_both_models_and_rewrites_in_place(repo):
    from ddpm.export.triton_repo import write_triton_repo

    version = repo / "ddpm_sampler" / "1"
    assert (version / "model.onnx").read_bytes() == MODEL.read_bytes()
    assert "from ddpm.serve.triton_model import TritonPythonModel" in (version / "model.py").read_text()
    assert (repo / "ddpm" / "1" / "model.onnx").is_file()  # the UNet-only model is still there
    write_triton_repo(MODEL, read(MODEL), repo)  # a second export replaces, leaves no temp dirs
    assert sorted(p.name for p in repo.iterdir()) == ["ddpm", "ddpm_sampler"]


def _req(**values):
    """Request tensors as Triton hands them to the model: (rows, 1) of the config's dtype."""
    dtypes = {"UINT64": np.uint64, "INT32": np.int32, "FP32": np.float32, "BYTES": object}
    wire = {f.name: f.wire for f in INPUTS}
    return {k: np.array([[v.encode() if isinstance(v, str) else v]], dtypes[wire[k]])
            for k, v in values.items()}


def test_runner_images_equal_a_local_sampler(sampler):
    runner = RequestRunner(sampler)
    got = runner.run(_req(seed=7, num_images=2, steps=3, sampler="ddim", label=4, guidance=2.0))
    want = sampler.sample(2, steps=3, sampler="ddim", seed=7, labels=4, guidance=2.0).images
    assert got.shape == (1, 2, 16, 16, 1) and got.dtype == np.uint8
    assert np.array_equal(got[0], want)
    default = runner.run(_req(seed=1, num_images=1, steps=2))  # absent inputs: ddpm-run defaults
    assert np.array_equal(default[0], sampler.sample(1, steps=2, seed=1).images)


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"seed": 1, "num_images": 0}, "num_images", "1..64"),
    ({"seed": 1, "num_images": 65}, "num_images", "1..64"),
    ({"num_images": 1}, "seed", "required"),
    ({"seed": 1, "num_images": 1, "steps": 1001}, "steps", "1..1000"),
    ({"seed": 1, "num_images": 1, "label": 11}, "labels", "out of range"),
    ({"seed": 1, "num_images": 1, "sampler": "euler"}, "sampler", "euler"),
    ({"seed": 2**40, "num_images": 1}, "seed", "seed"),
])
def test_bad_requests_get_one_line_config_errors(sampler, values, field, words):
    with pytest.raises(ConfigError) as e:
        RequestRunner(sampler).run(_req(**values))
    msg = error_message(e.value)
    assert e.value.field == field and words in msg and "\n" not in msg


def test_rows_must_match_and_shapes_are_checked():
    rows = {"seed": np.array([[1], [2]], np.uint64), "num_images": np.array([[1], [2]], np.int32)}
    with pytest.raises(ConfigError, match="same in every row"):
        parse_rows(rows)
    with pytest.raises(ConfigError, match="one value per request row"):
        parse_rows({"seed": np.zeros((1, 2), np.uint64), "num_images": np.ones((1, 1), np.int32)})
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_rows({**_req(seed=1, num_images=1), "sampler": np.array([[b"\xff"]], object)})
    assert error_message(RuntimeError("a\nb")) == "internal error in ddpm_sampler: RuntimeError: a b"


class _FakeUtils(types.ModuleType):
    """The parts of triton_python_backend_utils that TritonPythonModel uses."""

    FINAL = TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class TritonError:
        def __init__(self, msg):
            self.msg = msg

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class Logger:
        lines: list[str] = []

        @classmethod
        def log_info(cls, m):
            cls.lines.append(m)

        log_error = log_info

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return _FakeUtils.Tensor(name, request[name]) if name in request else None


class _Request(dict):
    """A request's input tensors plus the response sender the model answers through."""

    def get_response_sender(self):
        self.sent = []
        return types.SimpleNamespace(send=lambda response, flags: self.sent.append((response, flags)))


def test_execute_answers_each_request_of_a_batch_on_its_own(repo, sampler, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeUtils("pb"))
    # numpy 2 breaks only the real stub's tensors (test_serve.py); the stand-in has none
    monkeypatch.setattr("ddpm.serve.launch.check_numpy", lambda: None)
    from ddpm.serve.triton_model import TritonPythonModel

    cfg = {"parameters": {"model_path": {"string_value": "model.onnx"},
                          "workers": {"string_value": "2"}}}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / "ddpm_sampler"),
                      "model_version": "1", "model_instance_kind": "CPU"})
    good = _req(seed=3, num_images=2, steps=2)
    batch = [_Request(good), _Request(_req(seed=3, num_images=1, steps=5000)), _Request(good)]
    try:
        assert model.execute(batch) is None  # answers arrive through the senders
    finally:
        model.finalize()  # waits for the pool
    want = sampler.sample(2, steps=2, seed=3).images
    (ok1, f1), (err, f2), (ok2, f3) = (r.sent[0] for r in batch)
    assert all(len(r.sent) == 1 for r in batch) and f1 == f2 == f3 == _FakeUtils.FINAL
    for ok in (ok1, ok2):
        assert ok.error is None and np.array_equal(ok.output_tensors[0].array[0], want)
    assert err.output_tensors == [] and err.error.msg.startswith("steps") and "1..1000" in err.error.msg


def test_sampler_model_of_an_exported_checkpoint(exported, tmp_path):
    """A repository for a ddpm-export output (the session's shared export: no extra torch
    work) serves that model's own shape and images. The export CLI's --triton-repo call of
    write_triton_repo is exercised by test_export_variants."""
    from google.protobuf import text_format

    from ddpm.export.triton_repo import write_triton_repo

    onnx_path = exported("ddpm", True)["onnx"]
    write_triton_repo(onnx_path, read(onnx_path), tmp_path)
    model = tmp_path / "ddpm_sampler"
    assert (model / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    cfg = text_format.Parse((model / "config.pbtxt").read_text(), _model_config_pb2().ModelConfig())
    assert list(cfg.output[0].dims) == [-1, 8, 8, 1]  # the tiny checkpoint's 8x8x1 images
    runner = RequestRunner(Sampler.from_path(model / "1" / "model.onnx", num_threads=1))
    got = runner.run(_req(seed=5, num_images=3, steps=2, label=2))
    want = Sampler.from_path(onnx_path, num_threads=1).sample(3, steps=2, seed=5, labels=2)
    assert np.array_equal(got[0], want.images)
