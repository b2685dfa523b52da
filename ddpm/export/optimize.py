"""``--optimize``: onnxruntime.transformers' UNet optimizer, restricted to what the EP can run.

``optimize_model(model_type="unet")`` fuses GroupNorm, attention, bias-add and GELU patterns
into ``com.microsoft`` contrib ops. Several of those ops have CUDA kernels only; a graph
containing them does not even load on the CPU EP. :data:`CUDA_ONLY_FUSIONS` lists the
FusionOptions switches whose products are CUDA-only (per ORT's contrib-op kernel registry);
for ``target="cpu"`` (the default) they are off, and the result is proven loadable and
validated against torch on CPU like the plain graph. On top of those,
:class:`ddpm.export.fuse_attention.FuseSdpaAttention` turns the exporter's decomposed
attention into ``MultiHeadAttention`` (CPU and CUDA kernels), which they do not match, and
:class:`ddpm.export.fuse_groupnorm.FuseGroupNormAffine` folds each remaining GroupNorm's
affine into one op. ``target="cuda"`` keeps every fusion;
such a graph is validated only where a CUDA EP is present.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ddpm.errors import BackendError, ConfigError
from ddpm.export.fuse_attention import FuseSdpaAttention
from ddpm.export.fuse_groupnorm import FuseGroupNormAffine
from ddpm.export.validate import ParityReport, compare, model_batches, onnx_runner, torch_runner

TARGETS = ("cpu", "cuda")
CUDA_ONLY_FUSIONS = (
    "enable_group_norm",      # GroupNorm: CUDA/ROCm kernels only
    "enable_skip_group_norm",  # SkipGroupNorm: CUDA only
    "enable_nhwc_conv",       # NhwcConv: CUDA only
    "enable_bias_splitgelu",  # BiasSplitGelu: CUDA only
    "enable_bias_add",        # BiasAdd: CUDA only
    "enable_packed_qkv",      # packed-QKV MultiHeadAttention layouts: CUDA only
    "enable_packed_kv",
)


def fusion_options(target: str):
    from onnxruntime.transformers.fusion_options import FusionOptions

    if target not in TARGETS:
        raise ConfigError(f"unknown optimize target {target!r}; expected one of {', '.join(TARGETS)}")
    opts = FusionOptions("unet")
    if target == "cpu":
        for name in CUDA_ONLY_FUSIONS:
            setattr(opts, name, False)
    return opts


def optimize_graph(model_path: str | os.PathLike, target: str = "cpu"):
    """Optimized ModelProto of the ONNX graph at ``model_path``."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from ddpm.export.graphs import quiet

    model = onnx.load(str(model_path))
    model.producer_name = "pytorch"  # the optimizer checks it; finish_onnx sets ours back
    # opt_level 0: only the python fusions; ORT's own level-2 rewrites happen at session load
    # on the target machine, and baking in CPU-specific ones would tie the file to the CPU EP.
    with quiet():
        optimized = optimize_model(
            model, model_type="unet", optimization_options=fusion_options(target), opt_level=0,
            use_gpu=target == "cuda",
        )
    # The transformers fusions miss the exporter's SDPA decomposition; ours has CPU kernels.
    # GroupNorms the target kept decomposed (all on CPU) get their affine folded into one op.
    return FuseGroupNormAffine(FuseSdpaAttention(optimized.model).apply()).apply()


def export_optimized(
    model_path, out_path, loaded, module, spec, contract, *, validate: bool = True,
    target: str = "cpu", atol: float = 1e-4, say: Callable[[str], None] = print,
) -> ParityReport | None:
    """Write ``model_optimized.onnx`` and validate it on the target's EP."""
    import onnxruntime as ort

    from ddpm.export.graphs import finish_onnx

    model = optimize_graph(model_path, target)
    fused = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
    finish_onnx(model, out_path, contract)
    say(f"optimized for {target}: {len(model.graph.node)} nodes; contrib ops {fused or 'none'}")
    if not validate:
        return None
    if target == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError(
            "cannot validate a CUDA-optimized graph without the CUDA execution provider; "
            "install onnxruntime-gpu or pass --no-validate"
        )
    batches = model_batches(loaded.image_shape, loaded.num_classes, loaded.schedule.num_train_timesteps)
    ref = torch_runner(module)
    refs = [ref(b) for b in batches]
    report = ParityReport(reference="torch eager fp32 (CPU)")
    report.rows.append(compare(f"onnxruntime-{target} optimized", onnx_runner(out_path, spec), refs, batches, atol))
    say(report.table())
    report.raise_if_failed("validation of the optimized graph")
    return report
