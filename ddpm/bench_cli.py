"""`ddpm-bench`: side-by-side sampling benchmarks (issue 7; not yet available)."""

from __future__ import annotations

import sys

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Smoke-test sizes only.")
def main(quick: bool) -> None:
    """Benchmark sampling against diffusers' DDPMPipeline (not yet available)."""
    click.echo("ddpm-bench: not yet available; see benchmarks/ for the step benchmark.", err=True)
    sys.exit(1)
