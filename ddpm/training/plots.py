"""Training-loss plot (matplotlib, Agg backend, imported lazily; written atomically)."""

from __future__ import annotations

import os

import numpy as np

from ddpm._io import atomic_path


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average; the first points average over what exists so far."""
    v = np.asarray(values, dtype=np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def save_loss_plot(path: str | os.PathLike, losses: list[float], title: str = "") -> None:
    """Per-step loss (faint) and its moving average on a log scale, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe to call repeatedly
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        steps = np.arange(1, len(losses) + 1)
        if len(losses):
            ax.plot(steps, losses, lw=0.6, alpha=0.4, color="tab:blue", label="loss")
            window = len(losses) // 20
            if window > 1:
                ax.plot(steps, smooth(losses, window), lw=1.5, color="tab:blue",
                        label=f"mean of {window} steps")
            # Log scale only pays off once the loss spans a decade (early DDPM training does).
            if min(losses) > 0 and max(losses) / min(losses) > 10:
                ax.set_yscale("log")
            ax.legend(loc="upper right")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")  # tmp ends in .tmp: name the format
    finally:
        plt.close(fig)
