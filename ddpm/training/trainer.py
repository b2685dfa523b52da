"""The DDPM training loop (Ho et al. 2020, Algorithm 1) with EMA, warm-up, AMP and DDP.

Each step draws x_0 from the data, t ~ U{0..T-1} and ε ~ N(0, I), forms
x_t = sqrt(ᾱ_t)·x_0 + sqrt(1-ᾱ_t)·ε (eq. 4) with the coefficients from
``ddpm.schedule.q_sample_coefficients`` (converted to torch once), and regresses the model
output on ε, x_0 or v (Salimans & Ho 2022) with an MSE loss (eq. 14, "L_simple").
With ``objective="corrupt"`` (seeds/001) a step instead blends x_0 with uniform noise u over
the data range, x = x_0·(1−a) + u·a with a = t/(T−1), and regresses the output on x_0; the
timestep input carries a (the article's BasicUNet ignores it). Class-conditional runs
replace labels by the null label with probability ``label_dropout`` so the model also learns
the unconditional score (Ho & Salimans 2022, classifier-free guidance).

Everything random in a step is drawn from generators keyed by (seed, step), for the whole
global batch, so a resumed run repeats an uninterrupted one exactly and DDP ranks (which
each take a slice of the global batch) agree on what the batch is.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm.training import ddp
from ddpm.training.config import TrainConfig
from ddpm.training.datasets import DataOrder, step_generator
from ddpm.training.prepare import Prepared, prepare
from ddpm.training.state import capture_rng, check_loss, weights_sha256

#: When set, each rank writes the sha256 of its final weights to DIR/rank{R}.sha256.
HASH_DIR_ENV = "DDPM_TRAIN_HASH_DIR"


class StopRequest:
    """Ctrl-C during training, taken at a step boundary instead of wherever it lands.

    Python raises KeyboardInterrupt wherever the main thread happens to be; inside a
    ``__del__`` or weakref callback (tqdm, torch) that exception is printed and swallowed and
    training runs on. So the first SIGINT only sets a flag that the loop reads after each
    step (then it saves ckpt.pt and raises KeyboardInterrupt itself); a second SIGINT raises
    at once, as usual. Installed only in the main thread of a single-process run: DDP ranks
    stopping at different steps would hang in their collectives.
    """

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._previous = None
        if (enabled and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            # Python's own handler only: a SIGINT the parent ignores (a background job) or
            # an embedding app's handler stays as it is.
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


@dataclass
class TrainResult:
    out: Path
    step: int
    losses: list[float]
    is_main: bool = True  # rank 0 (the rank that wrote the files)


def train(
    config: TrainConfig, *, resume: str | os.PathLike | None = None, explicit: Collection[str] = ()
) -> TrainResult:
    """Validate everything, then train; rank 0 writes ckpt.pt, loss.png and sample grids.

    ``explicit`` names the options set on the command line; on ``resume`` every other
    option comes from the checkpoint (see :func:`ddpm.training.config.resume_config`).
    """
    try:
        return Trainer(prepare(config, resume=resume, explicit=explicit)).fit()
    finally:
        ddp.teardown()


class Trainer:
    def __init__(self, run: Prepared) -> None:
        self.run, self.cfg, self.dist = run, run.config, run.dist
        self.raw_model = run.model
        self.model = run.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.model = DistributedDataParallel(run.model, device_ids=ids)
        self.ema = run.ema
        self.optimizer = run.optimizer
        self.step = run.start_step
        self.losses = list(run.losses)
        self.order = DataOrder(len(run.data), self.cfg.batch_size, self.cfg.seed)
        self.schedule = run.schedule
        a, b = (torch.from_numpy(c).float().to(run.dist.device) for c in run.q_coefficients)
        self.sqrt_ac, self.sqrt_1m_ac = a, b  # (T,) each, float32, cast once
        self.shard = self.cfg.batch_size // self.dist.world_size
        self.cond = run.num_classes > 0
        self.saved_step = run.start_step or None  # step of the ckpt.pt on disk, if any
        self.corrupt = self.schedule.objective == "corrupt"
        lo, hi = run.data.data_info()["value_range"]
        self.noise_lo, self.noise_span = float(lo), float(hi) - float(lo)

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup`` steps, then constant (a function of step)."""
        if self.cfg.warmup <= 0:
            return self.cfg.lr
        return self.cfg.lr * min(1.0, (step + 1) / self.cfg.warmup)

    def batch(self, step: int):
        """This rank's slice of global batch ``step``: (x_t, t, y, target)."""
        cfg, dev = self.cfg, self.dist.device
        B = cfg.batch_size
        lo = self.dist.rank * self.shard
        sl = slice(lo, lo + self.shard)
        x0, y = self.run.data.batch(self.order.indices(step)[sl])
        g = step_generator(cfg.seed, step, 1)
        t = torch.randint(0, cfg.num_train_timesteps, (B,), generator=g)[sl]
        draw = torch.rand if self.corrupt else torch.randn  # corrupt() blends uniform noise
        eps = draw((B, *x0.shape[1:]), generator=g)[sl]
        drop = torch.rand(B, generator=g)[sl] < cfg.label_dropout
        x_t, target = self.noisy_and_target(x0.to(dev), eps.to(dev), t.to(dev))
        labels = None
        if self.cond:
            null = torch.full_like(y, self.run.num_classes)  # the CFG "no class" label
            labels = torch.where(drop.to(y.device), null, y).to(dev)
        return x_t, t.to(dev), labels, target

    def noisy_and_target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
        """(x_t, regression target) for clean images x0, noise eps and timesteps t (B,).

        For the corrupt objective ``eps`` is uniform [0, 1) and t/(T−1) the blend amount.
        """
        if self.corrupt:
            amount = (t.float() / max(self.cfg.num_train_timesteps - 1, 1)).view(-1, 1, 1, 1)
            u = self.noise_lo + self.noise_span * eps  # uniform over the data range
            return x0 * (1 - amount) + u * amount, x0
        a = self.sqrt_ac[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        b = self.sqrt_1m_ac[t].view(-1, 1, 1, 1)
        x_t = a * x0 + b * eps  # DDPM eq. 4
        if self.cfg.prediction_type == "epsilon":
            return x_t, eps
        if self.cfg.prediction_type == "sample":
            return x_t, x0
        return x_t, a * eps - b * x0  # v (Salimans & Ho 2022), as schedule.training_target

    def train_step(self, step: int) -> float:
        x_t, t, y, target = self.batch(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        dev_type = self.dist.device.type
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            out = self.model(x_t, t, y)
        loss = F.mse_loss(out.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.ema.update(self.raw_model)
        return float(ddp.mean_across_ranks(loss.detach(), self.dist).item())

    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg, out = self.cfg, Path(self.cfg.out)
        self.raw_model.train()
        # None: no bar when stderr is not a terminal, so a log or a failing run's stderr
        # holds only the outcome (the one error: line), not thousands of bar updates.
        bar = tqdm(total=cfg.steps, initial=self.step, disable=None if self.dist.is_main else True,
                   unit="step", dynamic_ncols=True, desc=f"train {cfg.arch}")
        stop = StopRequest(enabled=not self.dist.enabled)
        try:
            while self.step < cfg.steps:
                if stop.requested:
                    self.stop_for_interrupt(bar)
                loss = self.train_step(self.step)
                check_loss(loss, self.step + 1, self.cfg, self.saved_step)  # never save NaN
                self.step += 1
                self.losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                bar.update(1)
                # Checkpoint before the grid: a grid that fails never loses the run.
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.write_checkpoint()
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.write_samples()
            if stop.requested:
                self.stop_for_interrupt(bar)
        finally:
            bar.close()
            stop.restore()
        self.write_checkpoint()
        if not (cfg.sample_every and self.step % cfg.sample_every == 0):
            self.write_samples()
        self.write_hash()
        ddp.barrier(self.dist)
        return TrainResult(out=out, step=self.step, losses=self.losses, is_main=self.dist.is_main)

    def stop_for_interrupt(self, bar) -> None:
        """Save the steps done so far (unless ckpt.pt already holds them), then stop."""
        if self.saved_step != self.step:
            self.write_checkpoint()
        ckpt = Path(self.cfg.out) / "ckpt.pt"
        bar.write(f"saved {ckpt} at step {self.step}; continue with: ddpm-train --resume {ckpt}",
                  file=sys.stderr)
        raise KeyboardInterrupt

    def write_samples(self) -> None:
        if not self.dist.is_main:
            return
        from ddpm.training.preview import sample_images, save_sample_grid

        images = sample_images(
            self.ema.model, self.schedule, num_images=self.cfg.num_samples,
            channels=self.run.data.channels, image_size=self.cfg.image_size,
            num_classes=self.run.num_classes, seed=self.cfg.seed % 2**32,
            num_steps=self.cfg.sample_steps, device=self.dist.device,
        )
        path = Path(self.cfg.out) / f"samples_step{self.step:06d}.png"
        save_sample_grid(path, images, self.run.num_classes)

    def checkpoint(self) -> dict:
        import ddpm
        from ddpm.models.checkpoint import FORMAT, FORMAT_VERSION
        from ddpm.models.registry import config_to_dict

        data = self.run.data.data_info()
        data["num_classes"] = self.run.num_classes
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": self.cfg.arch,
            "model_config": config_to_dict(self.run.model_config),
            "schedule": self.schedule.to_dict(),
            "data": data,
            "ema": _cpu(self.ema.state_dict()),
            "model": _cpu(self.raw_model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": capture_rng(),
            "train_args": self.cfg.to_dict(),
            "losses": list(self.losses),
            "versions": {"torch": str(torch.__version__), "ddpm": str(ddpm.__version__)},
        }

    def write_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        from ddpm.models.checkpoint import save_checkpoint
        from ddpm.training.plots import save_loss_plot

        out = Path(self.cfg.out)
        save_checkpoint(out / "ckpt.pt", self.checkpoint())
        self.saved_step = self.step
        save_loss_plot(out / "loss.png", self.losses, title=f"{self.cfg.arch} on {self.cfg.dataset}")

    def write_hash(self) -> None:
        folder = os.environ.get(HASH_DIR_ENV)
        if folder:
            digest = weights_sha256({**self.raw_model.state_dict(),
                                     **{f"ema.{k}": v for k, v in self.ema.state_dict().items()}})
            (Path(folder) / f"rank{self.dist.rank}.sha256").write_text(digest + "\n")


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}
