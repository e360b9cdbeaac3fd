"""Data-parallel training under `torchrun`: one process per device, gradients averaged.

`torchrun --nproc_per_node N -m cifartui train PRESET` starts N copies of the headless
command; each reads its rank from the environment torchrun sets. Every process keeps
the whole dataset on its device, draws the same epoch permutation, and trains on its
own slice of each global batch (`train.batch_size` stays the global batch size).
Only rank 0 writes the run directory. The backend is NCCL on GPUs and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun, also with one process (which then checks NCCL alone)

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_name(self, requested: str) -> str:
        """Each process takes the GPU of its local rank unless the config pins the CPU."""
        if self.enabled and requested != "cpu" and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def all_reduce_(self, tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says True (a stop request, for instance)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())  # sync point: only at the agreed checkpoints of the loop

    def broadcast_path(self, path: Path | None) -> Path:
        """Rank 0's run directory, told to every rank."""
        if not self.enabled:
            assert path is not None
            return path
        box = [str(path) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return Path(box[0])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


_current = Distributed()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_environment() -> Distributed:
    """Join the process group torchrun describes in the environment (once); else one process."""
    global _current
    if "LOCAL_RANK" not in os.environ or "RANK" not in os.environ or _current.enabled:
        return _current  # not under torchrun (or already joined)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_nccl = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    if use_nccl:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_nccl else "gloo")
    _current = Distributed(rank=rank, world_size=world_size, local_rank=local_rank, launched=True)
    return _current


def shutdown() -> None:
    global _current
    if _current.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _current = Distributed()


__all__ = ["Distributed", "from_environment", "shutdown"]
