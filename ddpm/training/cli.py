"""``ddpm-train``: parse options, then call :func:`ddpm.training.trainer.train`.

Torch is imported inside the command, so ``ddpm-train --help`` stays instant. Runs unchanged
under ``torchrun --nproc-per-node N`` (DDP; rank 0 writes the files).
"""

from __future__ import annotations

import json

import click

from ddpm._cli import OneLineCommand, friendly_errors
from ddpm.errors import BackendError, ConfigError
from ddpm.schedule import BETA_SCHEDULES, OBJECTIVES, PREDICTION_TYPES
from ddpm.training.config import TrainConfig

D = TrainConfig()  # defaults shown in --help come from the one dataclass


def require_train_extra() -> None:
    """Name the extra to install instead of an ImportError traceback from deep inside."""
    import importlib.util

    missing = [m for m in ("torch", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendError(
            f"ddpm-train needs {', '.join(missing)}, which is not installed; "
            'pip install "ddpm-toolkit[train]"'
        )


def _parse_model_config(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"--model-config is not valid JSON ({e.msg} at char {e.pos}); pass an object such "
            "as '{\"base_channels\": 32}'"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            "--model-config must be a JSON object such as '{\"base_channels\": 32}', "
            f"got {type(value).__name__}"
        )
    return value


@click.command(cls=OneLineCommand,
               context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", default=D.dataset,
              help="digits (bundled, offline), mnist, fashion-mnist, cifar10, or folder:PATH "
                   "(labels from sub-folders if present).")
@click.option("--arch", default=D.arch, help="Model preset (see ddpm.models.archs()).")
@click.option("--image-size", type=int, default=D.image_size, help="Train at SxS pixels.")
@click.option("--steps", type=int, default=D.steps, help="Total optimizer steps (resume: the new total).")
@click.option("--batch-size", type=int, default=D.batch_size,
              help="Global batch size (split across torchrun processes).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help=f"Output folder for ckpt.pt, loss.png, samples_step*.png "
                   f"[default: {D.out}; with --resume, the checkpoint's folder].")
@click.option("--conditional/--unconditional", default=D.conditional,
              help="Class-conditional training with label dropout (classifier-free guidance).")
@click.option("--label-dropout", type=float, default=D.label_dropout,
              help="Probability of replacing a label by the null label (conditional runs).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue from OUT/ckpt.pt exactly (run-defining options come from it).")
@click.option("--init-from", type=click.Path(dir_okay=False), default=None,
              help="Fine-tune: start from this ckpt.pt's EMA weights (its arch, model config, "
                   "image size and schedule) with a fresh optimizer and step count.")
@click.option("--lr", type=float, default=D.lr, help="AdamW peak learning rate.")
@click.option("--warmup", type=int, default=D.warmup, help="Linear learning-rate warm-up steps.")
@click.option("--weight-decay", type=float, default=D.weight_decay, help="AdamW weight decay.")
@click.option("--ema-decay", type=float, default=D.ema_decay,
              help="EMA decay of the weights used for samples and export.")
@click.option("--grad-clip", type=float, default=D.grad_clip,
              help="Clip the gradient norm to this value (0 disables).")
@click.option("--seed", type=int, default=D.seed, help="Seed: same seed, same run.")
@click.option("--prediction-type", type=click.Choice(PREDICTION_TYPES), default=D.prediction_type,
              help="What the network predicts: the noise, x_0, or v.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=D.objective,
              help="diffusion (DDPM noising, Ho et al. 2020) or corrupt (seeds/001: blend with "
                   "uniform noise, predict the clean image; sample with --sampler mix). corrupt "
                   "implies --prediction-type sample.")
@click.option("--beta-schedule", type=click.Choice(BETA_SCHEDULES), default=D.beta_schedule,
              help="Noise schedule.")
@click.option("--num-train-timesteps", type=int, default=D.num_train_timesteps,
              help="Diffusion steps T.")
@click.option("--sample-every", type=int, default=D.sample_every,
              help="Write a sample grid every K steps (0: only at the end).")
@click.option("--save-every", type=int, default=D.save_every,
              help="Write ckpt.pt every K steps (0: only at the end).")
@click.option("--num-samples", type=int, default=D.num_samples, help="Images per sample grid.")
@click.option("--sample-steps", type=int, default=D.sample_steps,
              help="DDIM steps for the sample grids.")
@click.option("--bf16", is_flag=True, default=D.bf16,
              help="bfloat16 autocast for the forward pass (CPU and CUDA).")
@click.option("--data-root", default=D.data_root, type=click.Path(file_okay=False),
              help="Where torchvision datasets live.")
@click.option("--download", is_flag=True, default=D.download,
              help="Allow downloading mnist / fashion-mnist / cifar10 into --data-root.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=D.device,
              help="auto picks cuda when available (cuda:LOCAL_RANK under torchrun).")
@click.option("--model-config", default=None,
              help='JSON overrides of the preset\'s config, e.g. \'{"base_channels": 32}\'.')
@click.pass_context
@friendly_errors
def main(ctx: click.Context, resume: str | None, model_config: str | None, out: str | None,
         **options) -> None:
    """Train a DDPM noise predictor and write OUT/ckpt.pt (+ loss.png, sample grids).

    Example: ddpm-train --dataset digits --arch ddpm --image-size 16 --steps 3000 --out runs/digits
    """
    from click.core import ParameterSource

    explicit = {
        name for name in [*options, "model_config", "out"]
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    if options["objective"] == "corrupt" and "prediction_type" not in explicit:
        options["prediction_type"] = "sample"  # the corrupt objective's only target
    config = TrainConfig(out=out or D.out, model_config=_parse_model_config(model_config),
                         **options)

    require_train_extra()
    from ddpm.training.trainer import train  # imports torch

    result = train(config, resume=resume, explicit=explicit)
    if result.is_main:
        click.echo(f"wrote {result.out / 'ckpt.pt'} at step {result.step} "
                   f"(final loss {result.losses[-1]:.4f})")


if __name__ == "__main__":
    main()
