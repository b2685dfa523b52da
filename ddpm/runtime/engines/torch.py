"""ckpt.pt rebuilt in PyTorch (EMA weights by default): the reference engine.

torch and ``ddpm.models`` are imported when an engine is opened, never at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm import artifact
from ddpm.artifact import Contract, TensorSpec
from ddpm.errors import ArtifactError, DDPMError
from ddpm.runtime.engines.torch_common import TorchEngineBase, torch_device


def contract_from_checkpoint(ckpt: dict[str, Any], source: str) -> Contract:
    """The contract ddpm-export would write for ``ckpt``, so all engines read one spec."""
    from ddpm.schedule import ScheduleConfig

    data = ckpt.get("data") or {}
    try:
        size = data["image_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        c, k = int(data["channels"]), int(data.get("num_classes") or 0)
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(
            f"{source}: checkpoint 'data' {data!r} lacks image_size/channels ({e}); retrain"
        ) from None
    inputs = [TensorSpec("sample", "float32", ("batch", c, h, w)), TensorSpec("timestep", "int64", ("batch",))]
    if k > 0:
        inputs.append(TensorSpec("class_labels", "int64", ("batch",)))
    try:
        return artifact.contract_for(
            arch=ckpt["arch"],
            model_config=dict(ckpt["model_config"]),
            schedule=ScheduleConfig.from_dict(dict(ckpt["schedule"])),
            image_shape=(c, h, w),
            num_classes=k,
            inputs=inputs,
            outputs=[TensorSpec("model_output", "float32", ("batch", c, h, w))],
            versions=dict(ckpt.get("versions") or {}),
            value_range=tuple(float(v) for v in data.get("value_range") or (-1.0, 1.0)),
        )
    except DDPMError as e:
        raise ArtifactError(f"{source}: checkpoint describes an invalid model ({e}); retrain") from None


class TorchEngine(TorchEngineBase):
    """ckpt.pt through :mod:`ddpm.models.checkpoint`, ``weights`` "ema" or "model"."""

    name = "torch"
    default_file = "ckpt.pt"
    written_by = "ddpm-train"

    def __init__(
        self, path: Path, device: str = "cpu", *, weights: str = "ema", num_threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.dev = torch_device(device, num_threads)
        self.device = device
        from ddpm.models.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        self.contract = contract_from_checkpoint(ckpt, str(path))
        model, _ = model_from_checkpoint(ckpt, weights=weights)
        self.module = model.to(self.dev).eval()
