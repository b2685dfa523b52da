"""``ddpm-bench``: side-by-side sampling benchmark against diffusers' DDPMPipeline (issue 7).

A thin front end to ``benchmarks/bench_sampling.py`` (a script, like every benchmark: it
needs the dev extras -- torch, diffusers -- and a source checkout). ``--quick`` runs a tiny
model for a few steps: the smoke test. Everything after the options is passed through, e.g.
``ddpm-bench --batches 16 --repeats 5``; see ``ddpm-bench --help-bench`` for the list.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

from ddpm._cli import friendly_errors
from ddpm.errors import ConfigError

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_sampling.py"


def load_bench(script: Path = SCRIPT):
    """Import benchmarks/bench_sampling.py as a module; ConfigError naming the fix if absent."""
    if not script.is_file():
        raise ConfigError(
            f"ddpm-bench needs the benchmarks/ folder of a source checkout ({script} not found); "
            "clone the repository and `pip install -e .[dev]`"
        )
    missing = [m for m in ("torch", "diffusers", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ddpm-bench needs {', '.join(missing)}; install `pip install -e .[dev]`")
    spec = importlib.util.spec_from_file_location("bench_sampling", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--quick", is_flag=True, help="Tiny model, batch 1 and 2, 3 steps: a smoke test.")
@click.option("--help-bench", is_flag=True, help="List the benchmark's own options.")
@click.pass_context
@friendly_errors
def main(ctx: click.Context, quick: bool, help_bench: bool) -> None:
    """Time DDPMPipeline, our torch loop, torch.compile, ORT and ddpm-run side by side."""
    bench = load_bench()
    argv = (["--quick"] if quick else []) + list(ctx.args)
    if help_bench:
        argv = ["--help"]
    try:
        bench.run(argv, log=lambda m: click.echo(m))
    except SystemExit as e:  # argparse's --help
        sys.exit(e.code)
