"""The contract an export writes: tool versions and the :class:`ddpm.artifact.Contract` of a graph.

A module of its own so that every graph builder (the model graph in core.py, the whole-step
graph in step_graph.py, pt2.py) imports it without importing each other.
"""

from __future__ import annotations

from ddpm.artifact import Contract, contract_for
from ddpm.export.sources import LoadedModel
from ddpm.export.spec import GraphSpec


def versions(opset: int, exporter: str) -> dict[str, str]:
    """Library versions and exporters recorded in ``contract.versions``.

    ``exporter`` names the ONNX exporter; ``torchscript`` and ``pt2`` name what writes
    model.ts and model.pt2, so every file of one export carries where it came from.
    """
    import onnx
    import onnxruntime
    import torch

    import ddpm

    return {
        "ddpm-toolkit": ddpm.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "exporter": exporter,
        "torchscript": "torch.jit.trace",
        "pt2": "torch.export.export",
        "opset": str(opset),
    }


def model_contract(loaded: LoadedModel, spec: GraphSpec, vers: dict[str, str], **extra) -> Contract:
    """The validated contract of a graph with IO ``spec`` exported from ``loaded``."""
    return contract_for(
        arch=loaded.arch,
        model_config=loaded.model_config,
        schedule=loaded.schedule,
        image_shape=loaded.image_shape,
        num_classes=loaded.num_classes,
        inputs=list(spec.inputs),
        outputs=list(spec.outputs),
        versions=vers,
        value_range=loaded.value_range,
        **extra,
    )
