"""Quality against steps: every sampler at 5..1000 steps, judged by two digits classifiers.

For each sampler and step count the sampler allows (a refusal is recorded with its message),
the model is sampled twice on ONNX Runtime (CPU):
- conditional: labels 0..K-1 cycled, classifier-free guidance ``--guidance`` (CLI default 3);
  scored by the share of images the judge labels as asked (``accuracy``) and the share it
  labels so with probability >= 0.8 (``confident_correct``);
- unconditional: the null label; scored by the confident fraction relative to the real
  digits' (``ratio``, the issue's >= 0.95x / >= 0.9x gates) and the Fréchet distance to the
  held-out real digits in the judge's feature space, next to real-vs-real at the same N.
The headline judge is :func:`ddpm.judges.fit_cnn_judge` (CNN on augmented digits, 16x16); the
second is :func:`ddpm.quality.fit_judge` (logistic regression on 8x8 block means).

Writes JSON (with the CPU model, ISA flags and exact command) and a PNG plot (quality against
model calls per image, one line per sampler). Reduced run (about 10 min of CPU on 2 cores)::

    python benchmarks/quality_curve.py --images 20 --steps-list 5,10,20,50

Full curve (hours on one core; parallel runs over --samplers can be merged by hand)::

    python benchmarks/quality_curve.py --images 200 --steps-list 5,10,20,50,100,250,1000
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ddpm import judges, quality
from ddpm._io import atomic_path
from ddpm.cpuinfo import cpu_facts
from ddpm.errors import ConfigError

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (5, 10, 20, 50, 100, 250, 1000)
SAMPLERS = ("ddpm", "ddim", "dpm++2m", "mix")  # a model refuses those it was not trained for


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _cond_scores(cnn, lr, images: np.ndarray, labels: np.ndarray) -> dict:
    p = cnn.probabilities(images)
    pl = lr.probabilities(quality.features(images))
    hit = p.argmax(1) == labels
    return {
        "cnn_accuracy": float(hit.mean()),
        "cnn_confident_correct": float((hit & (p.max(1) >= quality.CONFIDENCE)).mean()),
        "lr_accuracy": float((pl.argmax(1) == labels).mean()),
        "cnn_worst_class_accuracy": float(min(hit[labels == k].mean() for k in np.unique(labels))),
    }


def _uncond_scores(cnn, lr, images: np.ndarray) -> dict:
    feats = quality.features(images)
    c, r = cnn.confident_fraction(images), lr.confident_fraction(feats)
    return {
        "cnn_confident": c, "cnn_ratio": c / cnn.reference_fraction,
        "lr_confident": r, "lr_ratio": r / lr.reference_fraction,
        "cnn_frechet": cnn.frechet_distance(images, cnn.heldout_images),
        "lr_frechet": lr.frechet_distance(feats, lr.heldout_features),
        "classes_present": int(len(np.unique(cnn.probabilities(images).argmax(1)))),
    }  # fmt: skip


def _reference(cnn, lr, n: int, seed: int) -> dict:
    """The judges on real digits; real-vs-real Fréchet with n real images (a random subset
    of the training half) against the held-out half, i.e. at the samples' N."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(cnn.train_images), size=min(n, len(cnn.train_images)), replace=False)
    sub = cnn.train_images[idx]
    return {
        "cnn_heldout_accuracy": cnn.accuracy,
        "cnn_confident_real": cnn.reference_fraction,
        "lr_confident_real": lr.reference_fraction,
        "cnn_frechet_real_vs_real": cnn.frechet_distance(sub, cnn.heldout_images),
        "lr_frechet_real_vs_real": lr.frechet_distance(quality.features(sub), lr.heldout_features),
    }


def run(args: argparse.Namespace) -> dict:
    from ddpm.runtime import Sampler

    s = Sampler.from_path(args.model, "ort", num_threads=args.threads)
    cnn, lr = judges.fit_cnn_judge(), quality.fit_judge(image_size=s.image_shape[1])
    k, n = s.num_classes, args.images
    rows = []
    for sampler in args.samplers:
        for steps in args.steps_list:
            row: dict = {"sampler": sampler, "steps": steps}
            try:
                s.plan(n, steps=steps, sampler=sampler)
            except ConfigError as e:
                rows.append({**row, "allowed": False, "reason": str(e)})
                print(f"{sampler:8s} {steps:5d}: not allowed ({e})", flush=True)
                continue
            t0 = time.perf_counter()
            if k:
                labels = np.arange(n) % k
                res = s.sample(n, steps=steps, sampler=sampler, seed=args.seed, labels=labels,
                               guidance=args.guidance)  # fmt: skip
                row["conditional"] = _cond_scores(cnn, lr, res.images, labels)
            res = s.sample(n, steps=steps, sampler=sampler, seed=args.seed + 1,
                           labels=k if k else None)  # fmt: skip
            row["unconditional"] = _uncond_scores(cnn, lr, res.images)
            row["seconds"] = time.perf_counter() - t0
            rows.append({**row, "allowed": True})
            cond = row.get("conditional", {}).get("cnn_accuracy", float("nan"))
            print(f"{sampler:8s} {steps:5d}: cond acc {cond:.3f}  uncond ratio "
                  f"{row['unconditional']['cnn_ratio']:.3f} (LR {row['unconditional']['lr_ratio']:.3f})"
                  f"  FD {row['unconditional']['cnn_frechet']:.1f}  {row['seconds']:.0f} s", flush=True)
    return {
        **cpu_facts(), "python": platform.python_version(),
        "command": "python " + " ".join(sys.argv),
        "model": str(s.path), "images": n, "seed": args.seed, "guidance": args.guidance,
        "threads": args.threads, "model_calls": "loop steps per image (CFG runs cond and "
        "uncond as one batch of 2B per step)",
        "reference": _reference(cnn, lr, n, args.seed), "rows": rows,
    }  # fmt: skip


def plot(result: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("conditional", "cnn_accuracy", f"label accuracy, guidance {result['guidance']:g}"),
              ("unconditional", "cnn_ratio", "confident fraction / real (unconditional)"),
              ("unconditional", "cnn_frechet", "Fréchet distance, CNN features")]  # fmt: skip
    panels = [p for p in panels if any(p[0] in r for r in result["rows"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (part, key, title) in zip(np.atleast_1d(axes), panels, strict=True):
        for sampler in dict.fromkeys(r["sampler"] for r in result["rows"]):
            pts = [(r["steps"], r[part][key]) for r in result["rows"]
                   if r["sampler"] == sampler and r.get("allowed") and part in r]  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=sampler)
        if key == "cnn_frechet":
            ax.axhline(result["reference"]["cnn_frechet_real_vs_real"], color="grey", ls="--",
                       label="real vs real")  # fmt: skip
            ax.set_yscale("log")
        elif key == "cnn_ratio":
            ax.axhline(0.95, color="grey", ls="--", label="0.95x gate")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(sorted({r["steps"] for r in result["rows"] if r.get("allowed")}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("model calls per image (steps)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"CNN judge, {result['images']} images per point, {Path(result['model']).name}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model.onnx [default: the bundled digits.onnx]")
    ap.add_argument("--images", type=int, default=100, help="images per point (each half)")
    ap.add_argument("--steps-list", type=_ints, default=list(STEPS))
    ap.add_argument("--samplers", type=lambda t: t.split(","), default=list(SAMPLERS))
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "quality_curve.json")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG of --out's JSON")
    args = ap.parse_args(argv)
    if args.replot:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
