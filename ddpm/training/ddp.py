"""Distributed data parallel under ``torchrun`` (Li et al. 2020, "PyTorch Distributed").

Without torchrun's environment this is a no-op single process. With it, each rank joins a
process group (gloo on CPU, nccl on CUDA), takes its shard of every global batch, and DDP
averages gradients so all ranks keep identical weights. Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ddpm.errors import BackendError, ConfigError, first_line


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda if available; ``cuda`` without a GPU is a ConfigError."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; pass --device auto, cpu or cuda")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda but torch sees no CUDA GPU; pass --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun, else a single process."""
    world = _env_int("WORLD_SIZE", 1, 1)
    rank = _env_int("RANK", 0, 0)
    local = _env_int("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise ConfigError(f"RANK={rank} must be < WORLD_SIZE={world}; launch with torchrun")
    dev = resolve_device(device, local)
    if world > 1:
        import torch.distributed as dist

        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            try:
                dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            except (RuntimeError, ValueError) as e:
                raise BackendError(
                    f"cannot join the torchrun process group ({first_line(e)}); launch with "
                    "`torchrun --nproc-per-node N`, or unset WORLD_SIZE for one process"
                ) from None
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _env_int(name: str, default: int, minimum: int) -> int:
    """A torchrun variable as an int >= minimum, else a ConfigError naming it."""
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(
            f"environment variable {name}={raw!r} must be an integer >= {minimum}; launch "
            "with torchrun or unset it"
        )
    return value


def teardown() -> None:
    """Leave the process group if this process joined one (also after a failed setup)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def mean_across_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a scalar over ranks (for logging the global-batch loss)."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    v = value.detach().clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size

