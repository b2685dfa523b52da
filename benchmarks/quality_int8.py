"""The runtime's quality gate (tests/test_quality.py) run on fp32 and int8 graphs side by side.

Same judge (:mod:`ddpm.quality`: a classifier fitted on the UCI digits), same checks, same
seeds as the gate, for ``model.onnx`` and the ``model_int8.onnx`` beside it:

- 256 unconditional samples (null label): confident fraction >= 0.9x the real digits';
- guidance 3, label k, 50 samples per k: >= 90 % classified as k, for every k.

    python benchmarks/quality_int8.py runs/bundled --out benchmarks/results/quality_int8.json
"""

from __future__ import annotations

import argparse
import json
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
    a = p.parse_args(argv)
    from ddpm import quality
    from ddpm.runtime.sampler import Sampler

    judge = quality.fit_judge(image_size=16)
    res = {"folder": a.folder}
    for prec in ("fp32", "int8"):
        res[prec] = gate(Sampler.from_path(a.folder, precision=prec), judge)
        print(prec, res[prec], flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    sys.exit(0 if all(main()[p]["passes_gate"] for p in ("fp32", "int8")) else 1)
