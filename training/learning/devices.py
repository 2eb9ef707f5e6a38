"""Where training runs: the device, and the processes of a torchrun launch (DistributedDataParallel).

Run directly, training is one process (rank 0 of 1) and nothing here talks to other processes. Under torchrun each
process reads its rank from the environment, rank 0 does the validation and the writing, and the few decisions
that must agree across processes (elapsed time, whether to stop) are broadcast from rank 0.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but PyTorch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps asked for, but PyTorch sees no Apple Metal device")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose from: auto, cpu, cuda, mps")
    return torch.device(name)


@dataclass(frozen=True)
class Processes:
    """This process's place in the launch: (0, 1, 0) when run directly."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Processes:
        """Rank, world size and local rank from torchrun's environment variables."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        """Rank 0 validates, logs and writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device_name: str) -> tuple[Processes, torch.device]:
    """Join the process group when launched by torchrun (NCCL on CUDA, else Gloo) and pick this process's device."""
    processes = Processes.from_environment()
    if processes.distributed:
        backend = "nccl" if torch.cuda.is_available() and device_name in ("auto", "cuda") else "gloo"
        dist.init_process_group(backend)
    device = resolve_device(device_name)
    if device.type == "cuda" and processes.distributed:
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    return processes, device


def finish(processes: Processes) -> None:
    """Wait for every process, then leave the process group."""
    if processes.distributed:
        dist.barrier()
        dist.destroy_process_group()


def shared_elapsed(started: float, processes: Processes) -> float:
    """Seconds since `started` on rank 0, shared by every process so that all of them stop on the same step and
    use the same learning rate."""
    elapsed = time.perf_counter() - started
    if processes.distributed:
        shared = torch.tensor([elapsed], dtype=torch.float64)
        dist.broadcast(shared, src=0)
        elapsed = float(shared.item())
    return elapsed


def shared_flag(flag: bool, processes: Processes) -> bool:
    """Rank 0's decision, the same on every process."""
    if processes.distributed:
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        flag = box[0]
    return flag
