"""Which processes share a training run: one, or several started by `torchrun` (DDP).

Each process computes its rows of every global batch (`rows`); the loop averages the logged numbers
over processes (`mean`) and waits for the others around checkpoints (`barrier`). With one process
every one of these is a no-op, so the loop has a single code path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from core.errors import LatentDeskError


@dataclass(frozen=True)
class Distributed:
    """This process's place in a DDP run started by `torchrun`; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed:
        """Join the process group torchrun describes (gloo on CPU, nccl on CUDA) and pick threads/GPU."""
        if device not in ("auto", "cpu", "cuda"):
            raise LatentDeskError(f"device must be auto, cpu or cuda, not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise LatentDeskError("--device cuda: PyTorch sees no CUDA GPU here")
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = 0, 0
        if world > 1:
            if not dist.is_initialized():
                # Rank 0 may spend long minutes alone (encoding the latent cache) while the others wait.
                dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=3))
            rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
            return cls(rank, world, torch.device("cuda", local_rank))
        if "OMP_NUM_THREADS" not in os.environ:   # an explicit thread count wins (e.g. two runs side by side)
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # all cores, shared out
        return cls(rank, world, torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch."""
        if batch_size % self.world:
            raise LatentDeskError(f"batch size {batch_size} does not split evenly over {self.world} processes")
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        if self.world == 1:
            return dict(values)
        packed = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        return dict(zip(values, (packed / self.world).tolist(), strict=True))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
