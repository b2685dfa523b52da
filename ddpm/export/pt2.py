"""``--format pt2``: the ``torch.export`` program as a ``.pt2`` package, and ``--aoti``.

``model.pt2`` is ``torch.export.save`` of the program (:mod:`ddpm.export.program`, dynamic
batch) with the contract as the extra file ``ddpm_contract.json``, stored in the archive
as ``<archive>/extra/ddpm_contract.json`` like model.ts's, so ``ddpm.artifact.read`` reads
both without torch. It loads with ``torch.export.load(path).module()`` and needs no Python
class of ours.

``model_aoti.pt2`` (``--aoti``) is the same program compiled ahead of time by AOTInductor
(``torch._inductor.aoti_compile_and_package``) into a shared library for this CPU, loaded
with ``torch._inductor.aoti_load_package``. Compiling runs a C++ compiler and takes minutes,
so it is opt-in. AOTInductor packages have no extra-files argument; the contract is added
to the zip afterwards at the same ``<archive>/extra/`` path, which the loader ignores.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from ddpm.artifact import TS_EXTRA_FILE, Contract
from ddpm.errors import BackendError, ValidationError, first_line

PT2_SAVER = "torch.export.save"
#: Extra file beside the contract: ``{"max_batch": int | null}``, the largest batch the
#: program accepts (see ``program.batch_range``); engines split larger batches.
BATCH_FILE = "ddpm_pt2.json"
AOTI_COMPILER = "torch._inductor.aoti_compile_and_package"


def _extra_files(program, contract: Contract) -> dict[str, str]:
    from ddpm.export.program import batch_range

    return {TS_EXTRA_FILE: contract.to_json(), BATCH_FILE: json.dumps({"max_batch": batch_range(program)[1]})}


def save_pt2(program, path: str | os.PathLike, contract: Contract) -> None:
    """``torch.export.save`` ``program`` to ``path`` with the contract as an extra file."""
    import torch

    # A file object, not a path: torch wants paths to end in .pt2, temp files do not.
    with open(path, "wb") as f:
        torch.export.save(program, f, extra_files=_extra_files(program, contract))


def compile_aoti(program, path: str | os.PathLike, contract: Contract) -> None:
    """AOTInductor-compile ``program`` into a package at ``path`` and add the contract to it."""
    import torch

    from ddpm.export.graphs import quiet

    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        raise BackendError("--aoti needs a C++ compiler (g++), which is not on PATH; "
                           "install one (apt-get install g++) or export without --aoti")
    p = Path(path)
    target = p if p.suffix == ".pt2" else p.with_name(p.name + ".pt2")  # the compiler wants .pt2
    try:
        with quiet(), torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=str(target))
    except Exception as e:  # noqa: BLE001 - inductor raises many types; the message is one line
        if target != p:
            target.unlink(missing_ok=True)
        raise ValidationError(
            f"AOTInductor could not compile the model ({first_line(e)}); export without --aoti "
            "(model.pt2 runs the same program without compilation)"
        ) from None
    with zipfile.ZipFile(target, "a") as zf:
        root = zf.namelist()[0].split("/")[0]
        for name, text in _extra_files(program, contract).items():
            zf.writestr(f"{root}/extra/{name}", text)
    if target != p:
        os.replace(target, p)


def load_pt2(path: str | os.PathLike, device: str = "cpu"):
    """A callable ``f(x, t[, y])`` running a model.pt2 (``torch.export.load``) on ``device``."""
    import torch

    with open(path, "rb") as f:
        module = torch.export.load(f).module()
    return module.to(device) if device != "cpu" else module


def load_aoti(path: str | os.PathLike, device: str = "cpu"):
    """A callable running an AOTInductor package (compiled for ``device`` at export time)."""
    import torch

    return torch._inductor.aoti_load_package(str(path))


def max_batch(path: str | os.PathLike) -> int | None:
    """The largest batch the package at ``path`` accepts (None: any), from :data:`BATCH_FILE`."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith("/extra/" + BATCH_FILE)]
        if not names:
            return None
        value = json.loads(zf.read(names[0])).get("max_batch")
    return int(value) if value else None


def is_aoti_package(path: str | os.PathLike) -> bool:
    """True for a package holding AOTInductor-compiled code (vs a plain torch.export program)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/data/aotinductor/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
