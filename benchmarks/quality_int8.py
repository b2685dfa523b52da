"""The runtime's quality gate (tests/test_quality.py) run on fp32 and int8 graphs side by side.

Same judge (:mod:`ddpm.quality`: a classifier fitted on the UCI digits), same checks, same
seeds as the gate, for ``model.onnx`` and the ``model_int8.onnx`` beside it:

- 256 unconditional samples (null label): confident fraction >= 0.9x the real digits';
- guidance 3, label k, 50 samples per k: >= 90 % classified as k, for every k.

    python benchmarks/quality_int8.py runs/bundled --out benchmarks/results/quality_int8.json

``--threads N`` opens the samplers with ``num_threads=N`` (default: the runtime's default);
``--ckpt`` only labels the result (the checkpoint the graphs were exported from). The output
JSON records both and the exact command line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def gate(sampler, judge, steps: int = 50) -> dict:
    from ddpm import quality

    k = sampler.contract.num_classes
    r = sampler.sample(256, steps=steps, seed=0, labels=k)
    frac = judge.confident_fraction(quality.features(r.images))
    guided = {}
    for c in range(k):
        g = sampler.sample(50, steps=steps, seed=100 + c, labels=c, guidance=3.0)
        guided[c] = round(judge.fraction_classified_as(quality.features(g.images), c), 3)
    ok = frac >= 0.9 * judge.reference_fraction and min(guided.values()) >= 0.9
    return {"unconditional_confident": round(frac, 3), "reference": round(judge.reference_fraction, 3),
            "guided_fraction_by_label": guided, "passes_gate": bool(ok)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("folder", help="folder with model.onnx and model_int8.onnx")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of the CPU session (default: the runtime's default)")
    p.add_argument("--ckpt", default=None,
                   help="the checkpoint the graphs were exported from, recorded in the output "
                        "[default: FOLDER/ckpt.pt if present]")
    a = p.parse_args(argv)
    from ddpm import quality
    from ddpm.runtime.sampler import Sampler

    ckpt = a.ckpt
    if ckpt is None and (Path(a.folder) / "ckpt.pt").is_file():
        ckpt = str(Path(a.folder) / "ckpt.pt")
    judge = quality.fit_judge(image_size=16)
    args = sys.argv[1:] if argv is None else list(argv)
    res = {"folder": a.folder, "ckpt": ckpt, "threads": a.threads,
           "command": shlex.join(["python", sys.argv[0], *args])}
    for prec in ("fp32", "int8"):
        res[prec] = gate(Sampler.from_path(a.folder, precision=prec, num_threads=a.threads), judge)
        print(prec, res[prec], flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    result = main()  # once: a generator calling main() per precision ran the whole gate twice
    sys.exit(0 if all(result[p]["passes_gate"] for p in ("fp32", "int8")) else 1)
