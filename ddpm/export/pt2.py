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
Both carry ``BATCH_FILE`` (the largest batch the program accepts, see
``program.batch_range``); ``ddpm.runtime.engines.pt2`` reads and runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

from ddpm.artifact import TS_EXTRA_FILE, Contract
from ddpm.errors import BackendError, ValidationError, first_line
from ddpm.runtime.engines.pt2 import BATCH_FILE  # the reader defines the archive layout

PT2_SAVER = "torch.export.save"
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

    from ddpm.export.quiet import quiet

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
