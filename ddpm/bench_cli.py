"""``ddpm-bench``: side-by-side sampling benchmark against diffusers' DDPMPipeline.

A thin front end to :mod:`ddpm.bench.harness`, which ships in the wheel; the contenders need
torch, diffusers and onnxruntime (``pip install "ddpm-toolkit[bench]"``, plus ``[openvino]``
for the OpenVINO rows). ``--quick`` runs a tiny model for a few steps: the smoke test. The
JSON is written only where ``--out`` says and built models go to ``--work`` (default the
user cache folder), so nothing lands in the working directory. Everything after the options
is passed through, e.g. ``ddpm-bench --batches 16 --repeats 5``; see ``--help-bench``.

``--equal-quality`` is the other view: images/s of each sampler at the fewest steps that
reach DDPM-50's quality on a quality curve (:mod:`ddpm.bench.equal_quality`; ORT only).
"""

from __future__ import annotations

import importlib.util
import sys

import click

from ddpm._cli import OneLineCommand, friendly_errors
from ddpm.errors import ConfigError

NEEDS = ("torch", "diffusers", "onnxruntime", "onnx")


def check_installed() -> None:
    """ConfigError naming the extra when a package the contenders need is missing."""
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"ddpm-bench needs {', '.join(missing)}, which are not installed; install them with "
            '`pip install "ddpm-toolkit[bench]"`'
        )


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"],
                                 "ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--quick", is_flag=True, help="Tiny model, batch 1 and 2, 3 steps: a smoke test.")
@click.option("--equal-quality", is_flag=True,
              help="Images/s of each sampler at the fewest steps reaching DDPM-50's quality "
                   "(on a benchmarks/quality_curve.py result; --help-bench lists its options).")
@click.option("--help-bench", is_flag=True, help="List the benchmark's own options.")
@click.pass_context
@friendly_errors
def main(ctx: click.Context, quick: bool, equal_quality: bool, help_bench: bool) -> None:
    """Time DDPMPipeline, torch loops, ORT and OpenVINO side by side on the same UNet."""
    argv = (["--quick"] if quick else []) + list(ctx.args)
    if equal_quality:
        if quick:
            raise ConfigError("--quick and --equal-quality are different views; pass one of them")
        from ddpm.bench.equal_quality import run as run_equal

        try:
            run_equal(["--help"] if help_bench else argv, log=lambda m: click.echo(m))
        except SystemExit as e:  # argparse's --help and its usage errors
            sys.exit(e.code)
        return
    if help_bench:
        argv = ["--help"]
    else:
        check_installed()
    from ddpm.bench.harness import run

    try:
        run(argv, log=lambda m: click.echo(m))
    except SystemExit as e:  # argparse's --help
        sys.exit(e.code)
