"""RNG states in a form ``torch.load(weights_only=True)`` accepts, weight hashes, and the
finite-loss guard that stops a diverged run before it writes a poisoned checkpoint.

Python's and numpy's RNG states contain tuples and numpy arrays; they are stored as plain
lists of ints so a checkpoint never needs a custom unpickler.
"""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import torch

from ddpm.errors import NonFiniteError


def seed_everything(seed: int) -> None:
    """Same seed -> same model init on every rank and every run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": [str(kind), [int(v) for v in keys], int(pos), int(has_gauss), float(cached)],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def check_loss(loss: float, step: int, config, saved_step: int | None) -> None:
    """Stop at the first NaN/Inf loss, naming the step, the checkpoint kept and what to try."""
    if math.isfinite(loss):
        return
    kept = (f"{config.out}/ckpt.pt from step {saved_step} is kept" if saved_step
            else "no checkpoint had been written yet")
    raise NonFiniteError(
        f"training loss is {loss} at step {step}: the run diverged and stopped without saving "
        f"it; {kept}; start again with a lower --lr (now {config.lr:g}) and --grad-clip 1 "
        f"(now {config.grad_clip:g})"
    )


def weights_sha256(state_dict: dict) -> str:
    """Hash of a state dict's names and exact bytes (ranks must agree bit for bit)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
