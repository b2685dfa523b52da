"""The seed "mix" sampler on a model trained with ``ddpm-train --objective corrupt``, judged.

seeds/001 trains its BasicUNet to predict the clean image from a blend with uniform noise
and samples by mixing x toward the prediction (m = 1/(N−i)) from uniform noise. This scores
such a checkpoint's samples with both digits judges (the CNN of :mod:`ddpm.judges`, the
logistic regression of :mod:`ddpm.quality`) at several step counts, and writes JSON plus a
PNG grid of the largest step count. Sampling uses the pieces every backend shares: the
``mix`` step table, the torch reference step and the uniform x_T of ``ddpm.noise``::

    ddpm-train --dataset digits --arch basic --objective corrupt --image-size 16 \\
        --steps 600 --batch-size 32 --lr 1e-3 --warmup 50 --ema-decay 0.995 \\
        --sample-every 0 --out runs/mix
    python benchmarks/mix_digits.py runs/mix/ckpt.pt
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from ddpm import judges, quality
from ddpm._io import atomic_path
from ddpm.cpuinfo import cpu_facts

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--steps-list", type=lambda t: [int(v) for v in t.split(",")],
                    default=[5, 10, 20, 40])  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "mix_digits.json")
    args = ap.parse_args(argv)

    import torch

    import ddpm.models as models
    from ddpm.images import save_grid, to_uint8
    from ddpm.models.checkpoint import load_checkpoint
    from ddpm.schedule import ScheduleConfig
    from ddpm.training.preview import sample_images

    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.ckpt)
    model = models.build(ckpt["arch"], dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["ema"])
    schedule = ScheduleConfig.from_dict(ckpt["schedule"])
    size = int(ckpt["model_config"]["image_size"])
    cnn, lr = judges.fit_cnn_judge(), quality.fit_judge(image_size=size)
    rows, images = [], None
    for steps in args.steps_list:
        x = sample_images(model, schedule, num_images=args.images, channels=1, image_size=size,
                          seed=args.seed, num_steps=steps)  # fmt: skip
        images = to_uint8(x)
        c, r = cnn.confident_fraction(images), lr.confident_fraction(quality.features(images))
        rows.append({
            "steps": steps, "cnn_confident": c, "cnn_ratio": c / cnn.reference_fraction,
            "lr_confident": r, "lr_ratio": r / lr.reference_fraction,
            "cnn_frechet": cnn.frechet_distance(images, cnn.heldout_images),
            "classes_present": int(len(np.unique(cnn.probabilities(images).argmax(1)))),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    sub = cnn.train_images[np.random.default_rng(0).choice(len(cnn.train_images), args.images,
                                                            replace=False)]  # fmt: skip
    result = {
        **cpu_facts(), "python": platform.python_version(), "command": "python " + " ".join(sys.argv),
        "ckpt_step": int(ckpt["step"]), "train_args": ckpt["train_args"],
        "final_loss": float(np.mean(ckpt["losses"][-50:])), "images": args.images,
        "reference": {"cnn_confident_real": cnn.reference_fraction,
                      "lr_confident_real": lr.reference_fraction,
                      "cnn_frechet_real_vs_real": cnn.frechet_distance(sub, cnn.heldout_images)},
        "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    save_grid(png, images[:64], nrow=8, scale=4)
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
