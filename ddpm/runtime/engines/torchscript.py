"""model.ts on TorchScript (``torch.jit.load``), CPU or CUDA; torch imported on open only.

A TorchScript archive carries no input shapes, so its contract is checked against the
module at load in two ways: the image size its ``model_config`` builds (a fully
convolutional net runs at any size, so only the config tells a 16x16 model from a 64x64
one) and one call on a zero image of the contract's shape, whose output must have the
contract's output shape. A lying contract then fails in one line before any sampling.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ddpm import artifact
from ddpm.errors import ArtifactError, DDPMError, first_line
from ddpm.runtime.engines.torch_common import TorchEngineBase, torch_device


class TorchScriptEngine(TorchEngineBase):
    """model.ts (same signature as the ONNX graph, contract in its extra files)."""

    name = "torchscript"
    default_file = "model.ts"
    written_by = "ddpm-export"

    def __init__(self, path: Path, device: str = "cpu", *, num_threads: int | None = None) -> None:
        self.path = Path(path)
        self.contract = artifact.read(path)
        self.device = device
        self.dev = torch_device(device, num_threads)
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "jit is deprecated": noise to users
                self.module = torch.jit.load(str(path), map_location=self.dev).eval()
        except Exception as e:  # torch raises RuntimeError/ValueError subtypes for bad archives
            raise ArtifactError(
                f"{path}: torch.jit.load cannot read this TorchScript file ({first_line(e)}); "
                "re-export it with `ddpm-export CKPT`"
            ) from None
        self._check_graph()

    def _check_graph(self) -> None:
        c = self.contract
        fix = "the contract belongs to another model: re-export it with `ddpm-export CKPT`"
        size = _config_image_size(c)
        if size is not None and size != (c.image_height, c.image_width):
            raise ArtifactError(
                f"{self.path}: the contract says {c.image_height}x{c.image_width} images but its "
                f"model_config builds a {size[0]}x{size[1]} {c.arch!r} model; {fix}", field="path",
            )
        import numpy as np

        x = np.zeros((1, *c.image_shape), np.float32)
        t = np.zeros(1, np.int64)
        y = np.full(1, c.null_label, np.int64) if c.conditional else None
        try:
            out = self.run(x, t, y)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a mismatched input
            raise ArtifactError(
                f"{self.path}: the module fails on one zero image of the contract's shape "
                f"{c.image_shape} ({first_line(e)}); {fix}", field="path",
            ) from None
        want = tuple(d if isinstance(d, int) else 1 for d in c.outputs[0].shape)
        if tuple(out.shape) != want:
            raise ArtifactError(
                f"{self.path}: the module maps a {c.image_shape} image to shape "
                f"{tuple(out.shape)[1:]}, the contract says {want[1:]}; {fix}", field="path",
            )


def _config_image_size(c: artifact.Contract) -> tuple[int, int] | None:
    """(H, W) the contract's arch and model_config build, None where they name no size."""
    from ddpm.models.registry import config_from_dict

    try:
        config = config_from_dict(c.arch, dict(c.model_config))
    except (DDPMError, TypeError, ValueError):
        return None  # not a ddpm preset (or an older config): the zero-image call decides
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    return None
