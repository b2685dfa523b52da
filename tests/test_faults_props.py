"""Property tests (hypothesis): random contract dicts and random CLI numbers never escape as
anything but a DDPMError / a one-line error with exit code 1 or 2.

The contract cases mutate the bundled digits model's real contract (so most fields stay
valid and the mutated one is what gets checked) and also try wholly random objects.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpm import artifact
from ddpm.errors import DDPMError

ASSET = Path(artifact.__file__).parent / "assets" / "digits.onnx"
BASE = artifact.read(ASSET).to_dict()

json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6,
)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _parse(d) -> None:
    try:
        artifact.Contract.from_dict(d, source="fuzz")
    except DDPMError as e:
        assert "\n" not in str(e), str(e)


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(BASE)), json_value, min_size=1, max_size=3))
def test_contract_with_random_field_values_raises_only_ddpm_errors(changes):
    _parse({**copy.deepcopy(BASE), **changes})


@SETTINGS
@given(st.sampled_from(["schedule", "model_config"]), st.text(max_size=25), json_value)
def test_contract_with_random_nested_values_raises_only_ddpm_errors(where, key, value):
    d = copy.deepcopy(BASE)
    keys = sorted(d[where])
    d[where][keys[len(key) % len(keys)] if key.isascii() else key] = value
    _parse(d)


@SETTINGS
@given(st.sampled_from(["inputs", "outputs"]), st.integers(0, 2), json_value)
def test_contract_with_random_tensor_specs_raises_only_ddpm_errors(key, index, value):
    d = copy.deepcopy(BASE)
    specs = d[key]
    if index < len(specs) and isinstance(value, dict):
        specs[index] = {**specs[index], **value}
    else:
        specs[min(index, len(specs) - 1)] = value
    _parse(d)


@SETTINGS
@given(json_value | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_contract_json_of_anything_raises_only_ddpm_errors(value):
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        artifact.Contract.from_json(text, source="fuzz")
    except DDPMError:
        pass


number_text = (st.integers(-(2**70), 2**70).map(str) | st.floats(allow_nan=True).map(repr)
               | st.sampled_from(["1e9", "inf", "-inf", "nan", "", "0x10", "1_000", "٣"]))


def _assert_one_line(result) -> None:
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output


TRAIN_INT = ["--batch-size", "--steps", "--num-samples", "--image-size",
             "--num-train-timesteps", "--sample-steps", "--warmup", "--save-every", "--seed"]
TRAIN_FLOAT = ["--lr", "--ema-decay", "--grad-clip", "--label-dropout", "--weight-decay"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(TRAIN_INT + TRAIN_FLOAT), number_text), min_size=1,
                max_size=3))
def test_ddpm_train_with_random_numbers_is_one_line_exit_1_or_2(workdir, options):
    from ddpm.training.cli import main

    # A dataset folder that does not exist: a run that passes every check stops at the data.
    args = ["--dataset", f"folder:{workdir / 'no-such-data'}", "--out", str(workdir / "run")]
    for flag, value in options:
        args += [flag, value]
    _assert_one_line(CliRunner().invoke(main, args))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["--opset", "--atol", "--step-count"]), number_text),
                min_size=1, max_size=3))
def test_ddpm_export_with_random_numbers_is_one_line_exit_1_or_2(workdir, options):
    from ddpm.export.cli import main

    args = [str(workdir / "missing.pt"), "--out", str(workdir / "export")]
    for flag, value in options:
        args += [flag, value]
    _assert_one_line(CliRunner().invoke(main, args))
