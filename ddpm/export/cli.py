"""``ddpm-export``: parse arguments, then call :func:`ddpm.export.export_checkpoint`.

Heavy imports (torch, onnx) happen inside the command, so ``ddpm-export --help`` is instant.
Exit codes: 0 success, 1 failed validation (parity beyond --atol), 2 bad input.

This layer is the only part of ``ddpm.export`` that touches ``ddpm.training``: it hands
:func:`training_images` to the export as the ``--int8`` calibration loader.
"""

from __future__ import annotations

from pathlib import Path

import click

from ddpm._cli import OneLineCommand, friendly_errors


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: the checkpoint's folder].")
@click.option("--format", "formats", default="onnx,torchscript", show_default=True,
              help="Comma list of base formats: onnx (model.onnx, exporter per --onnx-exporter), "
                   "torchscript (model.ts, torch.jit.trace; deprecated in PyTorch), pt2 (model.pt2, "
                   "torch.export.save of torch.export.export).")
@click.option("--onnx-exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo",
              show_default=True,
              help="dynamo: torch.onnx.export(dynamo=True) from torch.export (falls back to legacy "
                   "with the reason printed); legacy: the TorchScript-based tracer (dynamo=False).")
@click.option("--opset", default=18, show_default=True, type=int,
              help="ONNX opset (>= 18 for dynamo, >= 17 for legacy).")
@click.option("--aoti", is_flag=True,
              help="Also write model_aoti.pt2, compiled by AOTInductor for this CPU (needs pt2 in "
                   "--format and a C++ compiler; takes minutes).")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True,
              help="Which weights of a ckpt.pt to export.")
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (fp16 graph, fp32 IO).")
@click.option("--optimize/--no-optimize", default=None,
              help="Write model_optimized.onnx (onnxruntime UNet fusions, CPU-safe; ddpm-run on "
                   "the CPU prefers it). Default: with model.onnx, left out with a note if it "
                   "fails; --optimize makes that an error.")
@click.option("--int8", is_flag=True,
              help="Also write model_int8.onnx (static QDQ int8 convs, calibrated on the training data; CPU).")
@click.option("--with-step", is_flag=True,
              help="Also write model_step.onnx: one whole sampler step for any sampler and step count (table and noise are inputs; no Loop/If), which ddpm-run --loop device runs.")
@click.option("--step-sampler", default=None, metavar="NAME",
              help="The sampler the --with-step graph is validated on (the graph itself serves "
                   "every sampler): any of ddpm.schedule.SAMPLERS (ddpm, ddim, dpm++2m, mix) "
                   "that the model's objective allows [default: the first it allows].")
@click.option("--step-count", default=50, show_default=True, type=int,
              help="Steps N of the table the --with-step graph is validated on.")
@click.option("--atol", default=1e-4, show_default=True, type=float,
              help="Max-abs difference allowed vs torch (fp32 graphs).")
@click.option("--no-validate", is_flag=True, help="Skip the parity validation.")
@click.option("--triton-repo", type=click.Path(path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository here.")
@friendly_errors
def main(ckpt: Path, out_dir: Path | None, formats: str, onnx_exporter: str, opset: int, aoti: bool,
         weights: str, fp16: bool, optimize: bool | None, int8: bool, with_step: bool,
         step_sampler: str | None, step_count: int, atol: float, no_validate: bool,
         triton_repo: Path | None) -> None:
    """Export CKPT (a ddpm-train ckpt.pt, a .safetensors file with its config in the header
    metadata, or a diffusers UNet2DModel folder) to ONNX + TorchScript (+ pt2) carrying the
    artifact contract, validated against torch. The log names the exporter of each file."""
    from ddpm.export.core import export_checkpoint

    result = export_checkpoint(
        ckpt, out_dir, formats=formats, opset=opset, onnx_exporter=onnx_exporter, aoti=aoti,
        weights=weights, validate=not no_validate, atol=atol, fp16=fp16, optimize=optimize,
        int8=int8, with_step=with_step, step_sampler=step_sampler, step_count=step_count,
        triton_repo=triton_repo, calibration_loader=training_images, log=click.echo,
    )
    click.echo(f"done in {result.seconds:.1f} s")


def training_images(dataset: str, image_shape: tuple[int, int, int]):
    """x_0 images of ``dataset`` at the model's (C, H, W), for --int8 calibration (offline only)."""
    from ddpm.training.datasets import load_dataset

    ds = load_dataset(dataset, image_size=image_shape[1])
    return ds.images.float().numpy()[:, : image_shape[0]]


if __name__ == "__main__":
    main()
