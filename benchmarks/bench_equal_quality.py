"""Speed at equal quality (``ddpm-bench --equal-quality``), JSON into benchmarks/results/.

Images/s of each sampler at the fewest steps reaching the DDPM-50 quality of a
``benchmarks/quality_curve.py`` result; see :mod:`ddpm.bench.equal_quality`::

    python benchmarks/bench_equal_quality.py --curve benchmarks/results/quality_curve.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from ddpm.bench.equal_quality import run

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(RESULTS / "equal_quality_cpu.json")]
    run(argv, prog="python benchmarks/bench_equal_quality.py")
