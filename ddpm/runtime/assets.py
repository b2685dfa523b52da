"""The bundled default model: ``ddpm/assets/digits.onnx``, found via importlib.resources.

A class-conditional MNIST-digits model shipped as package data so that ``ddpm-run`` with no
``--model`` works right after ``pip install "ddpm-toolkit[cpu]"``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ddpm.errors import ArtifactError

BUNDLED_MODEL = "digits.onnx"


def default_model_path(backend: str = "ort") -> Path:
    """Path of the bundled ONNX model; ArtifactError with the fix if it is not installed."""
    if backend not in ("ort", "openvino", "auto"):  # the engines that read model.onnx
        raise ArtifactError(
            f"the bundled model is ONNX only; with backend {backend!r} pass a model path "
            "(model.ts for torchscript, ckpt.pt for torch)", field="path",
        )
    try:
        res = importlib.resources.files("ddpm") / "assets" / BUNDLED_MODEL
        found = res.is_file()
    except (ModuleNotFoundError, OSError):
        found = False
    if not found:
        raise ArtifactError(
            f"the bundled model ddpm/assets/{BUNDLED_MODEL} is missing from this install; "
            "pass the path of an exported model.onnx, or reinstall ddpm-toolkit", field="path",
        )
    # pip installs packages as folders, so the resource is a real file (not inside a zip).
    return Path(str(res))
