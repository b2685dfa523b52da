"""The declarative ONNX / TorchScript IO spec: names, dtypes, shapes and dynamic axes, in one place.

Every exported graph is described here (as optimum-onnx's ``OnnxConfig`` does): the exporter
feeds ``dynamic_axes`` to ``torch.onnx.export``, the contract lists ``inputs``/``outputs``,
and validation checks the ONNX Runtime session's IO against the same specs.

Model graph (``graph="model"``)::

    sample        float32 (batch, C, H, W)   noisy image x_t
    timestep      int64   (batch,)           model timestep t in 0..T-1
    class_labels  int64   (batch,)           only for conditional models; num_classes = null
    -> model_output float32 (batch, C_out, H, W)

The step graph (``graph="step"``, one whole sampler step) declares its own IO beside the
graph it builds: :func:`ddpm.export.step_graph.step_io`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpm.artifact import TensorSpec

BATCH = "batch"
MODEL_OUTPUT = "model_output"


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one exported graph; dim 0 named ``batch`` is dynamic."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s dynamic_axes: every string dimension stays symbolic."""
        return {
            s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
            for s in (*self.inputs, *self.outputs)
        }


def model_spec(
    channels: int, height: int, width: int, num_classes: int, out_channels: int | None = None
) -> GraphSpec:
    """IO of the noise-predictor graph; ``class_labels`` only when ``num_classes > 0``."""
    image = (BATCH, int(channels), int(height), int(width))
    inputs = [
        TensorSpec("sample", "float32", image),
        TensorSpec("timestep", "int64", (BATCH,)),
    ]
    if num_classes > 0:
        inputs.append(TensorSpec("class_labels", "int64", (BATCH,)))
    out = (BATCH, int(out_channels or channels), int(height), int(width))
    return GraphSpec(tuple(inputs), (TensorSpec(MODEL_OUTPUT, "float32", out),))
