"""model.pt2 (``torch.export``) and model_aoti.pt2 (AOTInductor) on torch; torch imported on open.

Both are zip archives written by ``ddpm-export --format pt2 [--aoti]`` with the contract at
``<archive>/extra/ddpm_contract.json`` (read by :func:`ddpm.artifact.read`) and
:data:`BATCH_FILE` beside it. A plain program is loaded with
``torch.export.load(f).module()``; a package holding compiled code (``data/aotinductor/``)
with ``torch._inductor.aoti_load_package``, which runs the shared library AOTInductor built
for the export machine's CPU.

A program may accept batches up to a bound only (``max_batch`` in :data:`BATCH_FILE`,
e.g. 63 for diffusers' UNet2DModel, which branches on ``batch >= 64``); :meth:`run` splits
larger batches into chunks of that size, so callers never see the bound.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ddpm import artifact
from ddpm.errors import ArtifactError, first_line
from ddpm.runtime.engines.torch_common import TorchEngineBase, torch_device

#: Extra file of a pt2 archive: ``{"max_batch": int | null}`` (null: any batch).
BATCH_FILE = "ddpm_pt2.json"
AOTI_MARKER = "/data/aotinductor/"


def archive_info(path: str | Path) -> tuple[bool, int | None]:
    """(holds AOTInductor code, max batch or None) of the pt2 archive at ``path``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            extra = [n for n in names if n.endswith("/extra/" + BATCH_FILE)]
            bound = json.loads(zf.read(extra[0])).get("max_batch") if extra else None
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: not a readable pt2 archive ({first_line(e)}); "
                            "re-export it with `ddpm-export CKPT --format pt2`") from None
    return any(AOTI_MARKER in n for n in names), (int(bound) if bound else None)


class Pt2Engine(TorchEngineBase):
    """model.pt2 / model_aoti.pt2 (same signature as the ONNX graph)."""

    name = "pt2"
    default_file = "model.pt2"
    written_by = "ddpm-export CKPT --format pt2"

    def __init__(self, path: Path, device: str = "cpu", *, num_threads: int | None = None) -> None:
        self.path = Path(path)
        self.contract = artifact.read(path)
        self.device = device
        self.aoti, self.max_batch = archive_info(path)
        self.dev = torch_device(device, num_threads)
        import torch

        try:
            if self.aoti:
                self.module = torch._inductor.aoti_load_package(str(path))
            else:
                with open(path, "rb") as f:  # a file object: torch wants paths ending in .pt2
                    self.module = torch.export.load(f).module().to(self.dev)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad archive
            raise ArtifactError(
                f"{path}: torch cannot load this pt2 file ({first_line(e)}); re-export it with "
                "`ddpm-export CKPT --format pt2` using this torch version"
            ) from None

    def run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        step = self.max_batch or len(x)
        if len(x) <= step:
            return super().run(x, t, y)
        parts = [super(Pt2Engine, self).run(x[i:i + step], t[i:i + step],
                                            None if y is None else y[i:i + step])
                 for i in range(0, len(x), step)]
        return np.concatenate(parts)
