"""Data parallelism under torchrun: which process this is, and the collective calls training needs.

A plain ``python -m galaxy_core train`` is a world of one and makes no collective calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from galaxy_core.base.config import ConfigError


@dataclass
class Distributed:
    """This process's place in a torchrun job; a single process is world 1, rank 0."""

    world: int = 1
    rank: int = 0
    backend: str = "none"
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, value: object) -> object:
        """Rank 0's ``value`` on every rank: only rank 0 reads the output folder, which need not
        be shared between machines."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's BatchNorm statistics to every rank, which drift apart on local batches,
        so evaluation and the saved weights are the same model everywhere."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group that torchrun describes in WORLD_SIZE/RANK/MASTER_ADDR (NCCL on
    GPUs, gloo on CPUs); a plain ``python -m galaxy_core train`` is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(backend=device.type)
    owns = not dist.is_initialized()
    if owns:
        if not dist.is_available():
            raise ConfigError(f"WORLD_SIZE is {world} but this PyTorch build has no torch.distributed")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(world=dist.get_world_size(), rank=dist.get_rank(),
                       backend=str(dist.get_backend()), owns_group=owns)
