"""The sampling benchmark from a source checkout: ``ddpm-bench`` with results kept in the repo.

Runs :func:`ddpm.bench.harness.run` (the same code as the ``ddpm-bench`` console script) and,
unless ``--out`` is given, writes the JSON to ``benchmarks/results/sampling_cpu.json``:

    python benchmarks/bench_sampling.py --models article --batches 1,16 --repeats 1 \\
        --out benchmarks/results/sampling_cpu_reduced.json
"""

from __future__ import annotations

import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    from ddpm.bench.harness import run
    from ddpm.errors import DDPMError

    if "--out" not in argv and not any(a.startswith("--out=") for a in argv) and "--help" not in argv:
        argv = [*argv, "--out", str(RESULTS / ("sampling_quick.json" if "--quick" in argv else "sampling_cpu.json"))]
    try:
        run(argv, prog="python benchmarks/bench_sampling.py")
    except DDPMError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:  # argparse's --help
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
