"""Shared call path of the two torch engines: numpy in, numpy out, no autograd.

torch is imported inside functions only, so importing this module is cheap and the ORT
path never loads torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ddpm.artifact import Contract
from ddpm.errors import BackendError


def torch_device(device: str, num_threads: int | None = None) -> Any:
    """``torch.device(device)`` after checking torch (and CUDA, if asked for) is usable."""
    try:
        import torch
    except ImportError:
        raise BackendError(
            "the torchscript and torch backends need PyTorch, which is not installed; "
            "use backend 'ort', or `pip install torch`"
        ) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError(
            "device 'cuda' was asked for but torch sees no CUDA GPU; use device 'cpu', or "
            'install a CUDA build of torch (`pip install "ddpm-toolkit[gpu]"`)'
        )
    if num_threads:
        # Process-wide in torch; set only when asked (oversubscribed OpenMP spins badly).
        torch.set_num_threads(int(num_threads))
    return torch.device(device)


class TorchEngineBase:
    """``run`` for an engine whose ``module`` is a torch callable on ``dev``."""

    name: str
    contract: Contract
    device: str
    path: Path
    module: Any
    dev: Any
    compute_precisions = ("fp32",)

    def run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            args = [torch.from_numpy(x).to(self.dev), torch.from_numpy(t).to(self.dev)]
            if y is not None:
                args.append(torch.from_numpy(y).to(self.dev))
            out = self.module(*args)
            return out.float().cpu().numpy()

    def close(self) -> None:
        self.module = None
