"""Imported diffusers pipelines sample as in diffusers, or are refused in one line.

A tiny random ``UNet2DModel`` (8x8, block_out_channels (8, 16)) is saved with diffusers'
own ``save_pretrained`` as a pipeline root (model_index.json, unet/, scheduler/) and exported
once with ``ddpm-export DIR``. Each scheduler option is then sampled by our runtime
(``Sampler``, host loop, onnxruntime) and by diffusers (the torch UNet and its scheduler, the
pipeline's own calls) from the same x_T and the same per-step noise z: the final samples must
agree to 1e-4 max abs. For options other than the exported one, the model file is the same
export with the contract's schedule replaced by what export stores for that scheduler config
(:func:`ddpm.export.diffusers_config.schedule_from_scheduler_config`), so no re-export is
needed per option.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddpm.errors import CheckpointError
from ddpm.export.cli import main
from ddpm.export.diffusers_config import check_pipeline, schedule_from_scheduler_config
from ddpm.noise import INIT_STEP, randn

pytestmark = [pytest.mark.slow]  # diffusers UNet2DModel exports

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ISSUE_DDIM = dict(steps_offset=1, set_alpha_to_one=False, thresholding=True,
                  timestep_spacing="trailing", rescale_betas_zero_snr=True,
                  prediction_type="v_prediction")
N, SEED, BATCH = 6, 3, 2


def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def _run(args) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def _one_line_error(out: str, *words: str) -> None:
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    for w in words:
        assert w in errors[0], errors[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(pipeline root, torch unet, model.onnx, export log) of the issue's DDIM pipeline."""
    root = tmp_path_factory.mktemp("pipe")
    unet = _tiny_unet()
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(**ISSUE_DDIM)) \
        .save_pretrained(str(root))
    code, out = _run([root, "-o", root / "out", "--format", "onnx", "--onnx-exporter", "legacy"])
    assert code == 0, out
    return root, unet, root / "out" / "model.onnx", out


def _with_schedule(onnx_path, schedule, dst):
    """The same exported graph with the contract's schedule replaced."""
    import onnx

    from ddpm import artifact
    from ddpm.export.graphs import set_contract

    c = artifact.read(onnx_path)
    c = dataclasses.replace(c, schedule=schedule.to_dict(), betas_sha256=schedule.betas_sha256())
    model = onnx.load(str(onnx_path))
    set_contract(model, c)
    onnx.save(model, str(dst))
    return dst


def _diffusers_loop(unet, scheduler, sampler: str, eta: float, monkeypatch) -> np.ndarray:
    """diffusers' DDPMPipeline / DDIMPipeline loop, with our x_T and per-step noise."""
    from diffusers.schedulers import scheduling_ddpm

    shape = (BATCH, 1, 8, 8)
    x = torch.from_numpy(randn(shape, seed=SEED, step=INIT_STEP, offset=0))
    scheduler.set_timesteps(N)
    for i, t in enumerate(scheduler.timesteps):
        z = torch.from_numpy(randn(shape, seed=SEED, step=i, offset=0))
        with torch.no_grad():
            out = unet(x, t).sample
        if sampler == "ddim":
            x = scheduler.step(out, t, x, eta=eta, variance_noise=z if eta else None).prev_sample
        else:
            monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, _z=z, **k: _z)
            x = scheduler.step(out, t, x).prev_sample
    return x.numpy()


def _ours(onnx_path, sampler: str, eta: float) -> np.ndarray:
    from ddpm.runtime import Sampler

    s = Sampler.from_path(onnx_path, loop="host", num_threads=1)
    return s.sample(n=BATCH, steps=N, sampler=sampler, eta=eta, seed=SEED).samples


def test_pipeline_root_exports_every_option_and_logs_the_schedule(exported):
    root, _, onnx_path, out = exported
    from ddpm import artifact

    sched = artifact.read(onnx_path).schedule_config
    for key, value in ISSUE_DDIM.items():
        assert getattr(sched, key) == value, key
        assert f"  {key}: {value}" in out.splitlines(), key
    assert sched.ddim_prev_timestep == "t_minus_ratio" and sched.clipped_eps is False
    assert "schedule stored in the contract:" in out


CASES = [  # (scheduler class, its options, sampler, eta)
    ("DDIMScheduler", ISSUE_DDIM, "ddim", 0.0),
    ("DDIMScheduler", {"prediction_type": "epsilon", "timestep_spacing": "linspace"}, "ddim", 1.0),
    ("DDIMScheduler", {"prediction_type": "sample", "timestep_spacing": "trailing",
                       "clip_sample_range": 0.5}, "ddim", 0.0),
    ("DDIMScheduler", {"prediction_type": "epsilon", "steps_offset": 1,
                       "set_alpha_to_one": False, "thresholding": True,
                       "sample_max_value": 2.0}, "ddim", 0.0),
    ("DDPMScheduler", {"prediction_type": "epsilon"}, "ddpm", 0.0),
    ("DDPMScheduler", {"prediction_type": "v_prediction", "variance_type": "fixed_large",
                       "steps_offset": 1, "thresholding": True}, "ddpm", 0.0),
    ("DDPMScheduler", {"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2",
                       "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, "ddpm", 0.0),
]


@pytest.mark.parametrize("cls,options,sampler,eta", CASES)
def test_exported_pipeline_samples_like_diffusers(exported, cls, options, sampler, eta,
                                                  tmp_path, monkeypatch):
    root, unet, onnx_path, _ = exported
    scheduler = getattr(diffusers, cls)(**options)
    cfg = json.loads(json.dumps(dict(scheduler.config), default=list))
    cfg["_class_name"] = cls
    schedule, _ = schedule_from_scheduler_config(cfg, tmp_path / "scheduler_config.json")
    path = onnx_path if options is ISSUE_DDIM else _with_schedule(onnx_path, schedule, tmp_path / "m.onnx")
    ours = _ours(path, sampler, eta)
    ref = _diffusers_loop(unet, scheduler, sampler, eta, monkeypatch)
    err = float(np.abs(ours - ref).max())
    # Stock float32 diffusers vs our float64 schedule and the ONNX graph: measured 1e-6..4.3e-6.
    assert err <= 1e-4, err
    assert math.isfinite(err)


def _scheduler_dir(tmp_path, cfg: dict):
    d = tmp_path / "unet"
    d.mkdir()
    _tiny_unet().save_pretrained(str(d))
    (d / "scheduler_config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("key,value,word", [
    ("variance_type", "learned_range", "predicts its variance"),
    ("variance_type", "learned", "predicts its variance"),
    ("variance_type", "fixed_large_log", "NaN"),
    ("beta_schedule", "laplace", "trained_betas"),
    ("timestep_type", "continuous", "not a DDPM/DDIM scheduler option"),
    ("use_karras_sigmas", True, "not a DDPM/DDIM scheduler option"),
    ("_class_name", "EulerDiscreteScheduler", "DDPMScheduler"),
    ("prediction_type", "flow", "prediction_type"),
    ("steps_offset", -1, "steps_offset"),
    ("trained_betas", [0.1, 1.5], "trained_betas"),
])
def test_unsupported_scheduler_values_are_refused(key, value, word, tmp_path):
    src = tmp_path / "scheduler_config.json"
    with pytest.raises(CheckpointError, match=None) as e:
        schedule_from_scheduler_config({"_class_name": "DDPMScheduler", key: value}, src)
    msg = str(e.value)
    assert "\n" not in msg and word in msg and str(src) in msg, msg


def test_refusal_reaches_the_cli_as_one_line_before_any_file(tmp_path):
    d = _scheduler_dir(tmp_path, {"_class_name": "DDPMScheduler", "variance_type": "learned_range"})
    code, out = _run([d, "-o", tmp_path / "out", "--format", "onnx"])
    assert code == 2, out
    _one_line_error(out, "variance_type='learned_range'", "fixed_small")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_off_unknown_keys_are_noted_and_old_spellings_honoured(tmp_path):
    src = tmp_path / "scheduler_config.json"
    sched, notes = schedule_from_scheduler_config(
        {"_class_name": "DDPMScheduler", "use_karras_sigmas": False, "predict_epsilon": False,
         "tensor_format": "pt", "variance_type": "fixed_small_log"}, src)
    assert sched.prediction_type == "sample" and sched.variance_type == "fixed_small"
    assert any("use_karras_sigmas" in n for n in notes)
    assert any("fixed_small_log" in n for n in notes)


@pytest.mark.parametrize("index,word", [
    ({"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"],
      "vqvae": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDIMScheduler"]}, "vqvae"),
    ({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
      "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
      "tokenizer": ["transformers", "CLIPTokenizer"],
      "scheduler": ["diffusers", "PNDMScheduler"]}, "text encoder"),
    ({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
      "scheduler": ["diffusers", "DDPMScheduler"]}, "UNet2DConditionModel"),
    ({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
      "scheduler": ["diffusers", "PNDMScheduler"]}, "PNDMScheduler"),
])
def test_other_pipeline_kinds_are_refused_in_one_line(index, word, tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as e:
        check_pipeline(tmp_path)
    assert "\n" not in str(e.value) and word in str(e.value), str(e.value)
    code, out = _run([tmp_path, "--format", "onnx"])
    assert code == 2
    _one_line_error(out, word)
    # The unet/ subfolder of such a pipeline is refused as well.
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    code, out = _run([tmp_path / "unet", "--format", "onnx"])
    assert code == 2
    _one_line_error(out, word)


def test_unet_folder_without_scheduler_takes_diffusers_defaults(tmp_path):
    from ddpm.export.sources import load_source

    d = tmp_path / "unet"
    _tiny_unet().save_pretrained(str(d))
    loaded = load_source(d)
    assert loaded.schedule.ddim_prev_timestep == "t_minus_ratio"
    assert loaded.schedule.clipped_eps is False
    assert any("default DDPMScheduler" in n for n in loaded.notes)


def test_contract_round_trips_the_new_schedule_fields_and_old_contracts_load(exported):
    from ddpm import artifact
    from ddpm.schedule import ScheduleConfig, step_table

    c = artifact.read(exported[2])
    again = artifact.Contract.from_json(c.to_json())
    assert again.schedule_config == c.schedule_config
    lines = artifact.schedule_lines(ScheduleConfig(trained_betas=(0.01,) * 1000))
    assert "trained_betas: 1000 values in [0.01, 0.01]" in lines
    # A contract written before these fields existed (the schedule of the bundled model
    # shipped until 2026-12, verbatim) keeps today's conventions.
    old = {**artifact.read(Path(__file__).parents[1] / "ddpm/assets/digits.onnx").to_dict(),
           "schedule": {"beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
                        "clip_sample": True, "clip_sample_range": 1.0,
                        "num_train_timesteps": 1000, "prediction_type": "epsilon",
                        "variance_type": "fixed_small"}}  # fmt: skip
    sc = artifact.Contract.from_dict(old).schedule_config
    assert (sc.timestep_spacing, sc.ddim_prev_timestep, sc.clipped_eps) == \
        ("leading", "next_visited", True)
    assert step_table(sc, 10, sampler="ddim").timesteps.tolist() == list(range(900, -1, -100))
