"""Fault tests: bad inputs built here, each ending in one typed error, nothing half-written.

Covers the trust boundaries outside the runtime and export packages: ``ddpm.limits`` bounds
on preset configs, the checkpoint header (types, bounds, a deflate bomb, NaN weights,
pickled code), contract field checks, and ``ddpm._cli``'s one-line errors and exit codes in
real processes. Writes under ENOSPC are in ``test_faults_io.py``, training faults in
``test_faults_train.py``, hypothesis properties in ``test_faults_props.py``, defects still
open elsewhere in ``test_faults_pending.py``.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from faults_common import BIN, assert_one_line_error, resave, run_cli

from ddpm import limits
from ddpm._cli import DEBUG_HINT, OneLineCommand, friendly_errors
from ddpm.errors import CheckpointError, ConfigError

# --------------------------------------------------------------------------- limits


def test_limits_env_relaxes_every_bound_and_sets_one(monkeypatch):
    assert limits.limit("IMAGE_SIZE") == 1024
    monkeypatch.setenv("DDPM_LIMITS", "relaxed")
    assert limits.limit("IMAGE_SIZE") == 1024 * limits.RELAXED_FACTOR
    monkeypatch.setenv("DDPM_MAX_IMAGE_SIZE", "4096")
    assert limits.limit("IMAGE_SIZE") == 4096
    monkeypatch.setenv("DDPM_MAX_IMAGE_SIZE", "lots")
    with pytest.raises(ConfigError, match="DDPM_MAX_IMAGE_SIZE='lots' is not a number"):
        limits.limit("IMAGE_SIZE")


@pytest.mark.parametrize("value,match", [
    (10**12, "above the limit 100000"), ("1000", "must be an integer, got '1000' \\(str\\)"),
    (True, "must be an integer, got True"), (float("nan"), "must be an integer"),
    (0, "must be >= 1"), (1e3, None),
])
def test_check_int_refuses_types_and_sizes_and_accepts_integral_floats(value, match):
    if match is None:
        assert limits.check_int("T", value, "TIMESTEPS") == 1000
        return
    with pytest.raises(ConfigError, match=match):
        limits.check_int("T", value, "TIMESTEPS")


HUGE_CONFIGS = {
    "basic": ({"channels": [200000, 8]}, "entry of channels"),
    "cond": ({"channels": [8, 8], "time_dim": 10**9}, "time_dim"),
    "ddpm": ({"base_channels": 200000}, "base_channels"),
    "doubleconv": ({"image_size": 100000}, "image_size"),
    "unet2d": ({"layers_per_block": 10**6}, "layers_per_block"),
    "wang": ({"dim": 64, "dim_mults": [1, 2, 128]}, "dim_mults"),
}


@pytest.mark.parametrize("arch", sorted(HUGE_CONFIGS))
def test_every_preset_refuses_sizes_above_the_limits_before_allocating(arch):
    from ddpm.models.registry import build

    overrides, field = HUGE_CONFIGS[arch]
    with pytest.raises(ConfigError, match=field) as e:
        build(arch, **overrides)
    assert "above the limit" in str(e.value) and "DDPM_LIMITS=relaxed" in str(e.value)


def test_product_of_base_and_multiplier_is_bounded_and_limits_can_be_raised(monkeypatch):
    from ddpm.models.registry import build

    with pytest.raises(ConfigError, match="widest layer base x max\\(mults\\)"):
        build("ddpm", base_channels=2048, channel_mults=(1, 4), image_size=8)
    monkeypatch.setenv("DDPM_MAX_NUM_CLASSES", "2")
    with pytest.raises(ConfigError, match="num_classes"):
        build("ddpm", num_classes=3)


@pytest.mark.parametrize("field,value,match", [
    ("num_classes", "3", "must be an integer, got '3'"),
    ("dropout", float("nan"), "must be a finite number"),
    ("channel_mults", "12", "list of integers"),
    ("num_res_blocks", True, "got True"),
])
def test_wrong_config_types_name_the_field(field, value, match):
    from ddpm.models.registry import build

    with pytest.raises(ConfigError, match=match):
        build("ddpm", **{field: value})


# ----------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    from conftest import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("good") / "ckpt.pt", "basic")


BAD_HEADERS = {
    "step as string": (lambda c: c.update(step="3"), "'step' must be int, got str '3'"),
    "model_config as list": (lambda c: c.update(model_config=[8]), "'model_config' must be dict"),
    "data null": (lambda c: c.update(data=None), "'data' must be dict, got null"),
    "schedule T as string": (lambda c: c["schedule"].update(num_train_timesteps="1000"),
                             "'num_train_timesteps' must be int, got str"),
    "schedule T 1e12": (lambda c: c["schedule"].update(num_train_timesteps=10**12),
                        "above the limit 100000"),
    "image_size 100000": (lambda c: c["data"].update(image_size=100000), "above the limit 1024"),
    "channels 200000": (lambda c: c["model_config"].update(channels=[200000, 16]),
                        "entry of channels"),
    "image_size as string": (lambda c: c["model_config"].update(image_size="8"),
                             "image_size ('basic' config) must be an integer"),
    "ema as list": (lambda c: c.update(ema=[1, 2]), "'ema' must be dict or null, got list"),
    "ema values not tensors": (lambda c: c.update(ema={"w": 1}), "'w' is a int, not a tensor"),
    "clip_sample as string": (lambda c: c["schedule"].update(clip_sample="yes"),
                              "'clip_sample' must be bool"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_checkpoint_header_is_one_checkpoint_error_naming_the_key(good_ckpt, tmp_path, case):
    from ddpm.models.checkpoint import load_checkpoint, model_from_checkpoint

    change, match = BAD_HEADERS[case]
    path = resave(good_ckpt, tmp_path / "ckpt.pt", change)
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(load_checkpoint(path))
    message = str(e.value)
    assert match in message and "\n" not in message, message


def test_nan_weights_are_found_at_load_with_the_fix(good_ckpt, tmp_path):
    from ddpm.models.checkpoint import load_checkpoint, model_from_checkpoint

    def poison(c):
        c["ema"] = dict(c["ema"])  # the fixture's ema and model dicts are one object
        name = sorted(c["ema"])[0]
        c["ema"][name] = c["ema"][name].clone()
        c["ema"][name].view(-1)[0] = float("inf")

    path = resave(good_ckpt, tmp_path / "ckpt.pt", poison)
    with pytest.raises(CheckpointError, match="hold NaN/Inf values .*lower --lr"):
        model_from_checkpoint(load_checkpoint(path), weights="ema")
    model_from_checkpoint(load_checkpoint(path), weights="model")  # the raw weights are fine


def _deflate_bomb(good: Path, dest: Path, inflated_mib: int = 1536) -> Path:
    """A torch zip whose extra member inflates ``inflated_mib`` MiB of zeros from ~1.5 MB:
    deflate blocks ended by a full flush are byte-identical, so one is repeated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = b"\0" * (1 << 20)
    block = co.compress(zeros) + co.flush(zlib.Z_FULL_FLUSH)
    bomb = block * inflated_mib + co.flush()
    crc = 0
    for _ in range(inflated_mib):
        crc = zlib.crc32(zeros, crc)
    with zipfile.ZipFile(good) as zf:
        members = [(i.filename, zf.read(i), 0, zlib.crc32(zf.read(i)), None) for i in zf.infolist()]
    prefix = members[0][0].split("/")[0]
    members.append((f"{prefix}/data/bomb", bomb, 8, crc, inflated_mib << 20))
    body, central = bytearray(), bytearray()
    for name, data, method, c, size in members:
        size = len(data) if size is None else size
        raw = name.encode()
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 33, c, len(data),
                            size, len(raw), 0) + raw + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 33, c,
                               len(data), size, len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                      len(body), 0)
    dest.write_bytes(bytes(body + central + end))
    return dest


def test_deflate_bomb_is_refused_from_the_zip_directory_in_process(good_ckpt, tmp_path):
    from ddpm.models.checkpoint import load_checkpoint

    bomb = _deflate_bomb(good_ckpt, tmp_path / "ckpt.pt")
    assert bomb.stat().st_size < 4 << 20
    with pytest.raises(CheckpointError, match="deflate bomb"):
        load_checkpoint(bomb)


def test_deflate_bomb_through_ddpm_export_stays_under_1_gb(good_ckpt, tmp_path):
    bomb = _deflate_bomb(good_ckpt, tmp_path / "ckpt.pt")
    # RUSAGE_CHILDREN is the peak over every child this process ever waited for (earlier
    # tests' exports too), so measure ddpm-export as the only child of a fresh wrapper.
    wrapper = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, str(BIN / "ddpm-export"), str(bomb), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
    )
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    assert_one_line_error(proc, codes=(2,), contains="deflate bomb")
    assert peak_kib < 1 << 20, f"peak RSS {peak_kib} KiB"  # < 1 GiB
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow  # a full export in a subprocess
def test_pickled_code_in_a_checkpoint_never_runs_through_the_cli(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"format": "ddpm-toolkit/ckpt", "payload": Evil()}, tmp_path / "ckpt.pt")
    proc = run_cli("ddpm-export", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, codes=(2,), contains="could run code")
    assert not marker.exists()


# --------------------------------------------------------------------------- _cli


@click.command(cls=OneLineCommand)
@click.option("--what", type=click.Choice(["bug", "enospc", "eacces", "eisdir", "ok"]))
@click.option("--n", type=int, default=1)
@friendly_errors
def _demo(what: str, n: int) -> None:
    if what == "bug":
        {}["missing"]
    if what in ("enospc", "eacces", "eisdir"):
        code = getattr(errno, what.upper())
        raise OSError(code, os.strerror(code), "/out/model.onnx")
    click.echo(f"ok {n}")


@pytest.mark.parametrize("args,code,contains", [
    (["--n", "abc"], 2, "'abc' is not a valid integer; see"),
    (["--bogus"], 2, "No such option"),
    (["--what", "bug"], 1, f"unexpected KeyError: 'missing'; {DEBUG_HINT}"),
    (["--what", "enospc"], 1, "No space left on device: '/out/model.onnx'; free disk space"),
    (["--what", "eacces"], 2, "Permission denied: '/out/model.onnx'; check the permissions"),
    (["--what", "eisdir"], 2, "a folder is in the way"),
])
def test_shared_command_class_makes_every_failure_one_line(args, code, contains):
    result = CliRunner().invoke(_demo, args)
    assert result.exit_code == code
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], lines


def test_debug_flag_and_env_print_the_traceback_first(monkeypatch):
    monkeypatch.delenv("DDPM_DEBUG", raising=False)
    result = CliRunner().invoke(_demo, ["--debug", "--what", "bug"])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-1].startswith(
        "error: unexpected KeyError")
    monkeypatch.setenv("DDPM_DEBUG", "1")
    assert "Traceback" in CliRunner().invoke(_demo, ["--what", "bug"]).stderr
    monkeypatch.setenv("DDPM_DEBUG", "0")
    assert "Traceback" not in CliRunner().invoke(_demo, ["--what", "bug"]).stderr


@pytest.mark.parametrize("cli,args,contains", [
    ("ddpm-train", ["--steps", "abc"], "'abc' is not a valid integer; see ddpm-train --help"),
    ("ddpm-train", ["--batch-size", "1e9"], "--batch-size"),
    ("ddpm-export", [], "Missing argument 'CKPT'; see ddpm-export --help"),
    ("ddpm-export", ["x.pt", "--opset", "zz"], "'zz' is not a valid integer"),
    ("ddpm-run", ["--steps", "abc"], "'abc' is not a valid integer; see ddpm-run --help"),
])
def test_usage_errors_of_each_cli_are_one_line_exit_2(cli, args, contains):
    assert_one_line_error(run_cli(cli, *args), codes=(2,), contains=contains)


def test_ddpm_train_without_torch_names_the_train_extra(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from ddpm.training.cli import main\n"
            "main(['--steps', '1', '--out', sys.argv[1]])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, codes=(2,), contains='pip install "ddpm-toolkit[train]"')
    assert not (tmp_path / "run").exists()


def test_value_range_0_0_in_a_contract_is_refused():
    from ddpm.artifact import Contract
    from ddpm.errors import ArtifactError

    d = artifact_dict()
    for bad in ([0.0, 0.0], [1.0, -1.0], [float("nan"), 1.0], ["-1", 1]):
        with pytest.raises(ArtifactError, match="value_range"):
            Contract.from_dict({**d, "value_range": bad}, source="m.onnx")


def artifact_dict() -> dict:
    from ddpm import artifact

    return artifact.read(Path(artifact.__file__).parent / "assets" / "digits.onnx").to_dict()


def test_nan_checkpoint_on_the_torch_backend_is_refused_at_load(good_ckpt, tmp_path):
    from ddpm.runtime.sampler import Sampler

    def poison(c):
        c["ema"] = {k: v.clone() for k, v in c["ema"].items()}
        next(iter(c["ema"].values())).view(-1)[0] = float("nan")

    path = resave(good_ckpt, tmp_path / "ckpt.pt", poison)
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        Sampler.from_path(path, "torch", "cpu")
