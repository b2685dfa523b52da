"""Shared fixtures: tiny checkpoints per preset and their exports, built once per session.

``make_checkpoint(arch, conditional)`` writes a ``ckpt.pt`` in the ddpm-train format with
random weights (every parameter perturbed, so zero-initialised output layers do not make the
model trivially constant); ``exported(arch, conditional)`` exports it once (model.onnx +
model.ts, validated) and returns the paths. Both cache by arguments, so any test module can
ask for the same model at no extra cost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: Smallest configs that still exercise each preset's blocks (attention, GroupNorm, skips).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "basic": {"channels": [8, 16], "kernel_size": 3},
    "doubleconv": {"channels": [8, 16], "time_dim": 16},
    "cond": {"channels": [8, 16], "time_dim": 16, "num_heads": 2},
    "ddpm": {
        "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attn_resolutions": [4], "num_groups": 4, "dropout": 0.0,
    },
    "wang": {"dim": 8, "init_dim": 8, "dim_mults": [1, 2], "resnet_groups": 4,
             "attn_heads": 2, "attn_dim_head": 4},
    "unet2d": {
        "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
        "norm_num_groups": 4, "attention_head_dim": 4,
    },
}
TINY_IMAGE_SIZE = 8
TINY_NUM_CLASSES = 3


def tiny_config(arch: str, conditional: bool, image_size: int = TINY_IMAGE_SIZE) -> dict[str, Any]:
    return {
        **TINY_CONFIGS[arch], "in_channels": 1, "out_channels": 1,
        "image_size": image_size, "num_classes": TINY_NUM_CLASSES if conditional else 0,
    }


def write_checkpoint(
    path: Path,
    arch: str,
    conditional: bool = False,
    *,
    image_size: int = TINY_IMAGE_SIZE,
    schedule: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write a ddpm-train style ckpt.pt with seeded random weights; returns ``path``."""
    import torch

    import ddpm.models as models
    from ddpm.models.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint
    from ddpm.schedule import ScheduleConfig

    torch.manual_seed(seed)
    config = tiny_config(arch, conditional, image_size)
    model = models.build(arch, dict(config))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    k = config["num_classes"]
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch,
        "model_config": config,
        "schedule": (schedule or ScheduleConfig().to_dict()),
        "data": {
            "dataset": "random", "image_size": image_size, "channels": 1, "num_classes": k,
            "class_names": [str(i) for i in range(k)] or None, "value_range": [-1.0, 1.0],
        },
        "ema": state, "model": state, "optimizer": {}, "step": 0, "rng": {},
        "train_args": {}, "losses": [], "versions": {"torch": str(torch.__version__)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, ckpt)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory) -> Callable[..., Path]:
    """Factory: ``make_checkpoint(arch="ddpm", conditional=False) -> Path`` of a ckpt.pt."""
    cache: dict[tuple, Path] = {}

    def make(arch: str = "ddpm", conditional: bool = False) -> Path:
        key = (arch, conditional)
        if key not in cache:
            d = tmp_path_factory.mktemp(f"ckpt-{arch}-{'cond' if conditional else 'uncond'}")
            cache[key] = write_checkpoint(d / "ckpt.pt", arch, conditional)
        return cache[key]

    return make


class Exported(dict):
    """Paths by kind ("ckpt", "onnx", "torchscript"); ``.result`` is the ExportResult."""

    result: Any = None


@pytest.fixture(scope="session")
def exported(make_checkpoint) -> Callable[..., Exported]:
    """Factory: ``exported(arch="ddpm", conditional=False) -> {"ckpt", "onnx", "torchscript"}``.

    Exports (and validates) once per (arch, conditional); files live beside the ckpt.pt.
    """
    cache: dict[tuple, Exported] = {}

    def make(arch: str = "ddpm", conditional: bool = False) -> Exported:
        key = (arch, conditional)
        if key not in cache:
            from ddpm.export import export_checkpoint

            ckpt = make_checkpoint(arch, conditional)
            result = export_checkpoint(ckpt)
            cache[key] = Exported(ckpt=ckpt, **result.paths)
            cache[key].result = result
        return cache[key]

    return make


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: the CI box has 2 shared cores, and OpenMP spin-waits badly when
    oversubscribed; it also makes float results independent of the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _damped_export(root: Path, arch: str, conditional: bool) -> Path:
    """A tiny random model whose output layer is scaled by 0.1, exported unvalidated.

    A random network is chaotic under a sampler loop (float32 rounding differences between
    backends grow every step); the damped one keeps the loop well conditioned, so plumbing
    bugs (a missing prev_x0, a wrong table row, a backend mix-up) still show as O(1)
    differences.
    """
    import torch

    from ddpm.export import export_checkpoint
    from ddpm.models.checkpoint import save_checkpoint

    ckpt = write_checkpoint(root / "ckpt.pt", arch, conditional, seed=1)
    c = torch.load(ckpt, weights_only=True)
    for weights in ("ema", "model"):
        for k in ("conv_out.weight", "conv_out.bias"):
            c[weights][k] = c[weights][k] * 0.1
    save_checkpoint(ckpt, c)
    export_checkpoint(ckpt, validate=False)  # the tests' parity checks are the validation
    return root


@pytest.fixture(scope="session")
def damped(tmp_path_factory) -> dict[str, Path]:
    """{"uncond": folder, "cond": folder}, each with ckpt.pt, model.onnx and model.ts."""
    return {
        "uncond": _damped_export(tmp_path_factory.mktemp("damped-uncond"), "ddpm", False),
        "cond": _damped_export(tmp_path_factory.mktemp("damped-cond"), "cond", True),
    }


# -- the fast tier: `pytest -m "not slow"` (README, "Tests") -------------------------------
#: Fixtures whose first use exports models with the default (dynamo) exporter, ~15 s each on
#: 2 cores: every test that takes one is part of the full suite only.
SLOW_FIXTURES = frozenset({"exported", "damped"})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def long_chains_slow(cases, n_index: int = 1, keep: int = 1) -> list:
    """Parametrize cases with the chains of N >= 999 steps (1-2 s each against diffusers)
    marked slow, except the first ``keep`` of them, which stay in the fast tier."""
    out, kept = [], 0
    for case in cases:
        if case[n_index] >= 999:
            kept += 1
            if kept > keep:
                out.append(pytest.param(*case, marks=pytest.mark.slow))
                continue
        out.append(case)
    return out
