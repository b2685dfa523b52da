"""``--format pt2`` (torch.export) and the ``pt2`` runtime engine: parity per call and per image.

Every preset's pt2 export must match torch eager within the fp32 atol; sampling through the
pt2 engine must give the images ORT and TorchScript give for the same seed (within 1e-3),
for the presets and for a diffusers UNet2DModel saved in the pipeline layout.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_CONFIGS, TINY_IMAGE_SIZE

from ddpm.artifact import read

pytestmark = [pytest.mark.slow]  # torch.export / AOTInductor builds

CASES = [("basic", False)] + [(a, True) for a in TINY_CONFIGS if a != "basic"]
IMAGE_ATOL = 1e-3  # samples in [-1, 1] after 4 steps of the same noise


def _sample(path, backend: str, **kw) -> np.ndarray:
    from ddpm.runtime import Sampler

    return Sampler.from_path(path, backend, num_threads=1).sample(3, steps=4, seed=11, **kw).samples


def _assert_same_images(onnx_path, ts_path, pt2_path) -> None:
    ref = _sample(onnx_path, "ort")
    for path, backend in ((pt2_path, "pt2"), (ts_path, "torchscript")):
        got = _sample(path, backend)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= IMAGE_ATOL, backend


@pytest.mark.parametrize(("arch", "conditional"), CASES)
def test_pt2_export_matches_torch_and_samples_like_ort_and_torchscript(
    arch, conditional, exported, tmp_path, one_torch_thread
):
    from ddpm.export import export_checkpoint

    base = exported(arch, conditional)
    result = export_checkpoint(base["ckpt"], tmp_path, formats=("pt2",))
    (row,) = result.reports[0].rows
    assert row.backend == "torch.export pt2" and row.batches == "1,1,7" and row.max_abs <= 1e-4
    pt2 = result.paths["pt2"]
    c = read(pt2)  # the contract is read from the zip without torch
    assert c == result.contract and c.versions["pt2"] == "torch.export.export"
    _assert_same_images(base["onnx"], base["torchscript"], pt2)


def test_pt2_engine_splits_batches_above_the_programs_bound(exported, tmp_path, one_torch_thread):
    """diffusers' Upsample2D branches on batch >= 64, so its program takes batch <= 63 only."""
    from ddpm.export import export_checkpoint
    from ddpm.runtime.engines import open_engine

    base = exported("unet2d", True)
    pt2 = export_checkpoint(base["ckpt"], tmp_path, formats=("pt2",), validate=False).paths["pt2"]
    engine, ort = open_engine(pt2, "pt2"), open_engine(base["onnx"], "ort")
    assert engine.name == "pt2" and engine.max_batch == 63 and not engine.aoti
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)).astype(np.float32)
    t = rng.integers(0, 1000, 70).astype(np.int64)
    y = rng.integers(0, 4, 70).astype(np.int64)
    assert np.abs(engine.run(x, t, y) - ort.run(x, t, y)).max() <= 1e-4
    engine.close()
    ort.close()


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A diffusers pipeline layout: unet/ (UNet2DModel) and scheduler/scheduler_config.json."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    cfg = TINY_CONFIGS["unet2d"]
    unet = UNet2DModel(sample_size=TINY_IMAGE_SIZE, in_channels=1, out_channels=1,
                       **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("pipeline")
    unet.save_pretrained(str(root / "unet"))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
        "prediction_type": "epsilon", "clip_sample": True,
    }))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }))
    return root


def test_diffusers_pipeline_folder_exports_all_three_formats_with_parity(pipeline_folder, one_torch_thread):
    from ddpm.export import export_checkpoint

    unet = pipeline_folder / "unet"
    result = export_checkpoint(unet, formats=("onnx", "torchscript", "pt2"))
    rows = {r.backend: r for r in result.reports[0].rows}
    assert set(rows) == {"torchscript", "onnxruntime-cpu fp32", "torch.export pt2"}
    assert all(r.max_abs <= 1e-4 for r in rows.values()), result.reports[0].table()
    assert "dynamo=True" in result.contract.versions["exporter"]
    assert read(unet / "model.pt2") == read(unet / "model.onnx") == result.contract
    _assert_same_images(unet / "model.onnx", unet / "model.ts", unet / "model.pt2")


def test_pt2_engine_refuses_a_file_that_is_not_a_pt2_archive(tmp_path):
    from ddpm.errors import ArtifactError
    from ddpm.runtime.engines.pt2 import archive_info

    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable pt2 archive") as e:
        archive_info(bad)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_aoti_package_matches_torch_and_samples_like_ort(exported, tmp_path, one_torch_thread):
    """AOTInductor compiles C++ (minutes on a shared 2-core machine), hence slow."""
    from ddpm.export import export_checkpoint

    base = exported("basic", False)
    result = export_checkpoint(base["ckpt"], tmp_path, formats=("pt2",), aoti=True)
    rows = {r.backend: r for r in result.reports[0].rows}
    assert rows["aotinductor pt2"].max_abs <= 1e-4 and rows["torch.export pt2"].max_abs <= 1e-4
    aoti = result.paths["aoti"]
    assert read(aoti) == result.contract
    ref, got = _sample(base["onnx"], "ort"), _sample(aoti, "pt2")
    assert np.abs(got - ref).max() <= IMAGE_ATOL
