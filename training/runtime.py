"""Process setup every program shares: the process group and the device (nanochat's compute_init).

One place decides the backend (NCCL on GPUs, gloo on CPUs) and the device of a rank, so the
training programs, the evaluation program and the benchmarks agree.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def rank_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def select_device(local_rank: int | None = None) -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{rank_env()[2] if local_rank is None else local_rank}")


def init_distributed() -> tuple[int, int]:
    """Join the process group (when torchrun started several ranks); returns (rank, world)."""
    rank, world, local_rank = rank_env()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restart == 0:
            dist.init_process_group(backend)
        else:
            # After torchrun restarts the group, the rendezvous store still holds the previous
            # attempt's addresses; a per-attempt key prefix keeps gloo/NCCL from dialling dead ranks.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=False, timeout=datetime.timedelta(seconds=300))
            dist.init_process_group(backend, store=dist.PrefixStore(f"k25/attempt{restart}/", store),
                                    rank=rank, world_size=world)
    return rank, world


def compute_init() -> tuple[int, int, torch.device]:
    """(rank, world, device) after joining the process group."""
    rank, world = init_distributed()
    return rank, world, select_device()
