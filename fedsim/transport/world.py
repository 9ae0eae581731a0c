"""torch.distributed ranks, devices, and the rendezvous store.

Rank 0 is the server; ranks 1..W-1 are clients (docs/architecture.md, "Process model"). With CUDA each
rank trains on ``cuda:LOCAL_RANK``; without it on the CPU.

torch.distributed rendezvous the processes (``dist.rendezvous``; torchrun or the local
launcher starts them); its store (:attr:`World.store`) is where the relay's server
publishes its address. No process group is made (:func:`init_world` says why). All
traffic then goes point to point between the server and one client over TCP sockets
(:mod:`fedsim.transport.relay`), on GPU too: no collective over the whole world runs after
start-up, because a collective waits for every rank and one dead client would hang it (an
NCCL collective cannot even be abandoned). What travels is small (LoRA factors, the
secure-aggregation messages, which are CPU-bound crypto anyway), so NCCL would buy little.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

SERVER_RANK = 0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


STORE_PREFIX = "fedsim"
"""Keys of :attr:`World.store` live under this prefix of torch.distributed's store."""


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    store: dist.Store
    """The job's rendezvous key-value store: torch.distributed's (a TCPStore hosted by rank 0,
    or by torchrun's agent), keys under ``fedsim/`` (and the torchrun restart count), its
    timeout the world's start-up timeout. Every rank reaches it before any frame is sent:
    the relay's server publishes its address there
    (:data:`fedsim.transport.relay.ADDRESS_KEY`); a client process may publish what every
    other must learn before the first round (its identity verify key). It is *not*
    authenticated: any process of the world can read, add or overwrite any key, so a
    reader must check what it reads (set once with ``compare_set(key, "", value)``,
    re-read its own keys), and whoever trusts it trusts every rank's launcher."""

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
    """Join the world (every rank within ``timeout_s``): torch.distributed's rendezvous,
    and its store kept as :attr:`World.store`.

    ``dist.rendezvous`` is the public API ``init_process_group`` uses inside; rank 0's
    TCPStore (or torchrun's agent's) waits for every rank. No process group is made: the
    relay's sockets carry every frame, and an idle gloo group would still let a client
    abort the server (gloo terminates a process that receives an unbound-buffer send it
    did not post a receive for, ``gloo::EnforceNotMet`` in ``pair.cc``, on any pair, any
    time). Code that wants a collective (a benchmark's baseline) makes its own group.
    """
    device = choose_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(dist.rendezvous(init_method, rank=rank, world_size=world_size, timeout=timeout))
    store.set_timeout(timeout)
    logger.debug("rank %d/%d on %s", rank, world_size, device)
    return World(rank, world_size, local_rank, device, dist.PrefixStore(store_prefix(), store))


def store_prefix() -> str:
    """``fedsim``, plus torchrun's restart count when there is one: a restarted world
    reuses the agent's store, and must not read the keys of the attempt before."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return f"{STORE_PREFIX}/{restart}" if restart else STORE_PREFIX


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
    """Leave the world: destroy a process group if this process made one (gloo: no wait
    on other ranks); the store closes with its last reference."""
    if dist.is_initialized():
        dist.destroy_process_group()
