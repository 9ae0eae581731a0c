"""torch.distributed ranks, devices and groups.

Rank 0 is the server; ranks 1..W-1 are clients (docs/architecture.md, "Process model"). With CUDA each
rank trains on ``cuda:LOCAL_RANK``; without it on the CPU.

All traffic is point-to-point between the server and one client, over gloo
(:mod:`fedsim.transport.relay`), on GPU too: no collective over the whole world runs after start-up,
because a collective waits for every rank and one dead client would hang it (an NCCL
collective cannot even be abandoned). What travels is small (LoRA factors, the
secure-aggregation messages, which are CPU-bound crypto anyway), so NCCL would buy little.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fedsim.transport.relay import relay_group

logger = logging.getLogger(__name__)

SERVER_RANK = 0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    relay_group: dist.ProcessGroup

    @property
    def is_server(self) -> bool:
        return self.rank == SERVER_RANK

    @property
    def num_clients(self) -> int:
        return self.world_size - 1


def under_torchrun() -> bool:
    """True when torchrun (or another launcher) has set the usual rendezvous variables."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_world_size() -> int:
    """WORLD_SIZE from torchrun's environment."""
    return int(os.environ["WORLD_SIZE"])


def choose_device(local_rank: int) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (wrapping over the visible GPUs), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_world(
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    init_method: str,
    timeout_s: float,
) -> World:
    """Join the world (every rank within ``timeout_s``) and build the relay group.

    The relay group's own gloo timeout never fires: the relay keeps its own deadlines
    (:func:`fedsim.transport.relay.relay_group`).
    """
    device = choose_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=timeout)
    logger.debug("rank %d/%d on %s", rank, world_size, device)
    return World(rank, world_size, local_rank, device, relay_group())


def init_from_torchrun(timeout_s: float) -> World:
    """Join the world described by torchrun's environment variables (single or multi node)."""
    return init_world(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        init_method="env://",
        timeout_s=timeout_s,
    )


def shutdown() -> None:
    """Leave the process group if this process joined one (gloo: no wait on other ranks)."""
    if dist.is_initialized():
        dist.destroy_process_group()
