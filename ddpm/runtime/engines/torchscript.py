"""model.ts on TorchScript (``torch.jit.load``), CPU or CUDA; torch imported on open only."""

from __future__ import annotations

import warnings
from pathlib import Path

from ddpm import artifact
from ddpm.errors import ArtifactError, first_line
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
