"""The UNet model zoo: every preset builds, runs, round-trips its config and exports to ONNX."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.models import archs, build, config_from_dict, config_to_dict

ARCHS = archs()
UNCONDITIONAL_ONLY = {"basic"}
CONDITIONAL = [a for a in ARCHS if a not in UNCONDITIONAL_ONLY]

# Tiny configs (8x8 images, a few channels) keep export + ORT checks cheap on CPU.
TINY = {
    "basic": dict(image_size=8, channels=(4, 8, 8)),
    "ddpm": dict(
        image_size=8,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        num_groups=4,
        num_classes=3,
    ),
    "doubleconv": dict(image_size=8, channels=(4, 8), time_dim=8, num_classes=3),
    "cond": dict(
        image_size=8,
        channels=(4, 8),
        time_dim=8,
        num_heads=2,
        num_classes=3,
        full_res_attention=True,
    ),
    "wang": dict(
        image_size=8,
        dim=8,
        init_dim=8,
        dim_mults=(1, 2),
        resnet_groups=4,
        attn_heads=2,
        attn_dim_head=4,
        num_classes=3,
    ),
    "unet2d": dict(
        image_size=8,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=4,
        num_classes=3,
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # On a small shared CI box, OpenMP threads spin-waiting for busy cores make these tiny
    # forwards up to 100x slower; one thread is faster. Restored after the module.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace every parameter with N(0, 0.3^2): zero-initialised output layers would
    otherwise make comparisons of outputs trivially pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _inputs(model, batch: int, seed: int = 0):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, c.num_classes, (batch,), generator=g) if c.num_classes else None
    return x, t, y


def test_every_task_preset_is_registered():
    assert set(ARCHS) == {"basic", "cond", "ddpm", "doubleconv", "unet2d", "wang"}
    assert set(TINY) == set(ARCHS)


@pytest.mark.parametrize(
    ("arch", "conditional"), [(a, False) for a in ARCHS] + [(a, True) for a in CONDITIONAL]
)
def test_default_preset_forward_shape_and_finite(arch, conditional):
    model = build(arch, num_classes=10 if conditional else 0).eval()
    assert model.config.num_classes == (10 if conditional else 0)
    for batch in (1, 3):
        x, t, y = _inputs(model, batch)
        with torch.no_grad():
            out = model(x, t, y)
        assert out.shape == (batch, model.config.out_channels, *x.shape[2:])
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_presets_accept_digit_image_sizes(arch):
    # 16 and 28 (digits) and 32 must all be valid sizes for every preset's default config.
    for size in (16, 28, 32):
        cfg = build(arch, TINY[arch], image_size=size).config
        assert cfg.image_size == size


@pytest.mark.parametrize("arch", ARCHS)
def test_config_json_round_trip_rebuilds_identical_model(arch):
    model = build(arch, TINY[arch])
    d = json.loads(json.dumps(config_to_dict(model.config)))
    cfg = config_from_dict(arch, d)
    assert cfg == model.config
    rebuilt = build(arch, cfg)
    a = {k: v.shape for k, v in model.state_dict().items()}
    b = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert a == b and len(a) > 0
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys, same shapes


VARIANTS = [
    ("ddpm", dict(channel_mults=(1,), num_res_blocks=3, attn_resolutions=(16,))),
    ("ddpm", dict(channel_mults=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(16, 4))),
    ("doubleconv", dict(channels=(4, 8, 8, 16))),
    ("cond", dict(channels=(8, 4, 12), num_heads=4)),
    ("wang", dict(init_dim=12, dim_mults=(1,))),
    ("wang", dict(dim_mults=(1, 2, 4, 8))),
    ("basic", dict(channels=(8, 16, 16, 24))),
    (
        "unet2d",
        dict(
            block_out_channels=(8, 8, 16),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        ),
    ),
]


@pytest.mark.parametrize(("arch", "overrides"), VARIANTS)
def test_variants_run_and_train_every_parameter(arch, overrides):
    """Other depths/widths/channel counts wire up, and no parameter is dead weight."""
    model = build(arch, TINY[arch], image_size=16, in_channels=3, out_channels=2, **overrides)
    x, t, y = _inputs(model, 2)
    out = model(x, t, y)
    assert out.shape == (2, 2, 16, 16)
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_configs_take_lists_where_they_store_tuples():
    cfg = build("ddpm", TINY["ddpm"], channel_mults=[1, 2], attn_resolutions=[4]).config
    assert cfg.channel_mults == (1, 2) and cfg.attn_resolutions == (4,)
    assert isinstance(hash(cfg), int)  # still a frozen, hashable config


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_image_size_is_a_config_error_naming_the_fix(arch):
    with pytest.raises(ConfigError, match=r"image size 15 is not divisible by \d+ .*; use "):
        build(arch, image_size=15)


def test_basic_rejects_class_conditioning():
    with pytest.raises(ConfigError, match="cannot be class-conditional"):
        build("basic", num_classes=10)


def test_config_errors_for_other_bad_values():
    with pytest.raises(ConfigError, match="GroupNorm with 8 groups cannot normalise 36"):
        build("ddpm", base_channels=36)
    with pytest.raises(ConfigError, match="num_heads 3 must divide"):
        build("cond", num_heads=3)
    with pytest.raises(ConfigError, match="down_block_types needs one block type"):
        build("unet2d", down_block_types=("DownBlock2D",))
    with pytest.raises(ConfigError, match="unknown config field"):
        config_from_dict("ddpm", {"base_channel": 32})


@pytest.mark.parametrize("arch", ARCHS)
def test_unconditional_model_refuses_labels(arch):
    cfg = {**TINY[arch], "num_classes": 0}
    model = build(arch, cfg).eval()
    x, t, _ = _inputs(model, 2)
    with pytest.raises(ConfigError, match="unconditional"):
        model(x, t, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("arch", CONDITIONAL)
def test_labels_matter_and_none_means_null_label(arch):
    model = _randomize(build(arch, TINY[arch]))
    x, t, y = _inputs(model, 3)
    null = torch.full((3,), model.config.num_classes, dtype=torch.long)
    with torch.no_grad():
        out_none, out_null = model(x, t, None), model(x, t, null)
        out_y, out_other = model(x, t, y), model(x, t, (y + 1) % model.config.num_classes)
    torch.testing.assert_close(out_none, out_null, rtol=0, atol=0)
    assert (out_y - out_other).abs().max() > 1e-3  # the label reaches the output


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "basic"])
def test_timestep_reaches_the_output(arch):
    model = _randomize(build(arch, TINY[arch]))
    x, t, y = _inputs(model, 2)
    with torch.no_grad():
        assert (model(x, t, y) - model(x, t + 1, y)).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_export_dynamic_batch_matches_torch(arch):
    ort = pytest.importorskip("onnxruntime")
    model = _randomize(build(arch, TINY[arch]))
    x, t, y = _inputs(model, 1)
    args = (x, t) if y is None else (x, t, y)
    names = ["x", "t", "y"][: len(args)]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation/tracer warnings
        torch.onnx.export(
            model,
            args,
            buf,
            input_names=names,
            output_names=["out"],
            opset_version=17,
            dynamic_axes={n: {0: "batch"} for n in [*names, "out"]},
            dynamo=False,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # see _one_torch_thread
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == names  # `basic` must keep its unused t
    x2, t2, y2 = _inputs(model, 2, seed=1)  # batch 2 != traced batch 1
    feeds = {"x": x2.numpy(), "t": t2.numpy()}
    if y2 is not None:
        feeds["y"] = y2.numpy()
    (got,) = sess.run(None, feeds)
    with torch.no_grad():
        want = model(x2, t2, y2).numpy()
    assert got.shape == want.shape == (2, model.config.out_channels, 8, 8)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_unet2d_wraps_diffusers_both_ways():
    from ddpm.models.unet2d import PREFIX, from_diffusers

    adapter = _randomize(build("unet2d", TINY["unet2d"]))
    inner = adapter.to_diffusers()
    assert type(inner).__name__ == "UNet2DModel"
    inner_keys = set(inner.state_dict())
    assert set(adapter.state_dict()) == {PREFIX + k for k in inner_keys}

    again = from_diffusers(inner)
    assert again.config == adapter.config and again.to_diffusers() is inner
    x, t, y = _inputs(adapter, 2)
    with torch.no_grad():
        direct = inner(x, t, class_labels=y).sample
        torch.testing.assert_close(adapter(x, t, y), direct, rtol=0, atol=0)


def test_unet2d_loads_a_local_diffusers_folder(tmp_path):
    from ddpm.errors import CheckpointError
    from ddpm.models.unet2d import load_diffusers_folder

    model = _randomize(build("unet2d", TINY["unet2d"]))
    model.to_diffusers().save_pretrained(tmp_path / "unet")
    loaded = load_diffusers_folder(str(tmp_path / "unet")).eval()
    assert loaded.config == model.config
    x, t, y = _inputs(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="cannot load a diffusers UNet2DModel"):
        load_diffusers_folder(str(tmp_path / "missing"))


def test_unet2d_from_diffusers_refuses_unmirrored_options():
    from diffusers import UNet2DModel

    from ddpm.models.unet2d import from_diffusers

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        class_embed_type="timestep",
    )
    with pytest.raises(ConfigError, match="class_embed_type='timestep'"):
        from_diffusers(unet)


def test_registry_import_is_lazy_about_diffusers():
    code = "import sys; from ddpm.models import archs; archs(); print('diffusers' in sys.modules)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"
