"""Export a checkpoint to ONNX + TorchScript (+ torch.export pt2) carrying the artifact contract.

``export_checkpoint(ckpt_path, out_dir=None, ...) -> ExportResult`` is the entry point; the
``ddpm-export`` CLI (cli.py) only parses arguments and calls it. Attributes are resolved
lazily so that importing ``ddpm.export.cli`` for ``--help`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddpm.export.core import ExportResult, export_checkpoint

__all__ = ["ExportResult", "export_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ddpm.export import core

        return getattr(core, name)
    raise AttributeError(f"module 'ddpm.export' has no attribute {name!r}")
