"""torch.distributed ranks, devices, and the rendezvous store.

Rank 0 is the server; ranks 1..W-1 are clients (docs/architecture.md, "Process model").

Devices (the run's ``device``: ``cpu``, ``cuda`` or ``auto``, :func:`device_for`): on CUDA
the rank with local rank L trains on ``cuda:(L mod G)``, G the GPUs this process sees
(``CUDA_VISIBLE_DEVICES``), so when processes outnumber GPUs several share one, each with
its own CUDA context and nothing capping its memory. L is torchrun's ``LOCAL_RANK``; the
local launcher passes the rank itself (every process is on this machine). The server is
placed by the same rule (local rank 0: ``cuda:0``): it evaluates the global model on the
test set (for a ViT-B or Swin-B far faster on a GPU), holding one model copy and no
per-sample gradients or optimizer state, and it is idle while clients train.
``auto`` is CUDA when it is available, else the CPU; ``cuda`` without CUDA is a
:class:`~fedsim.config.ConfigError` naming ``device``.

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

from fedsim.config import ConfigError
from fedsim.options import DEVICES, is_int

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


def device_for(local_rank: int, device_count: int, choice: str = "auto") -> torch.device:
    """The device of the process with local rank ``local_rank``, given ``device_count`` visible
    CUDA devices (0: no CUDA) and the run's ``device`` ``choice``.

    ``cpu``: the CPU. ``cuda``: ``cuda:(local_rank mod device_count)``, a
    :class:`~fedsim.config.ConfigError` naming ``device`` when there is no CUDA device.
    ``auto``: ``cuda`` when there is one, else the CPU. Pure: :func:`choose_device` reads
    this machine's devices.
    """
    if choice not in DEVICES:
        raise ConfigError("device", choice, f"one of {DEVICES}")
    if not is_int(local_rank) or local_rank < 0:
        raise ValueError(f"local_rank={local_rank!r} is invalid: expected an integer >= 0")
    if not is_int(device_count) or device_count < 0:
        raise ValueError(f"device_count={device_count!r} is invalid: expected an integer >= 0")
    if choice == "cpu" or (choice == "auto" and device_count == 0):
        return torch.device("cpu")
    if device_count == 0:
        raise ConfigError(
            "device", choice, "'cpu' or 'auto': this process sees no CUDA device (torch.cuda.is_available() is False)"
        )
    return torch.device("cuda", local_rank % device_count)


def visible_cuda_devices() -> int:
    """CUDA devices this process sees (``CUDA_VISIBLE_DEVICES`` applies); 0 without CUDA."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_device(local_rank: int, choice: str = "auto") -> torch.device:
    """:func:`device_for` on this machine's visible CUDA devices."""
    return device_for(local_rank, visible_cuda_devices(), choice)


def init_world(
    *,
    rank: int,
    world_size: int,
    local_rank: int,
    init_method: str,
    timeout_s: float,
    device: str = "auto",
) -> World:
    """Join the world (every rank within ``timeout_s``): torch.distributed's rendezvous,
    and its store kept as :attr:`World.store`.

    ``dist.rendezvous`` is the public API ``init_process_group`` uses inside; rank 0's
    TCPStore (or torchrun's agent's) waits for every rank. No process group is made: the
    relay's sockets carry every frame, and an idle gloo group would still let a client
    abort the server (gloo terminates a process that receives an unbound-buffer send it
    did not post a receive for, ``gloo::EnforceNotMet`` in ``pair.cc``, on any pair, any
    time). Code that wants a collective (a benchmark's baseline) makes its own group.

    ``device``: the run's device choice (:func:`device_for`); the rank's device is chosen,
    and made CUDA's current device, before the rendezvous, so a ``cuda`` without CUDA fails
    here and not in the first round.
    """
    chosen = choose_device(local_rank, device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(dist.rendezvous(init_method, rank=rank, world_size=world_size, timeout=timeout))
    store.set_timeout(timeout)
    logger.info("rank %d/%d (local rank %d) on %s", rank, world_size, local_rank, chosen)
    return World(rank, world_size, local_rank, chosen, dist.PrefixStore(store_prefix(), store))


def store_prefix() -> str:
    """``fedsim``, plus torchrun's restart count when there is one: a restarted world
    reuses the agent's store, and must not read the keys of the attempt before."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    return f"{STORE_PREFIX}/{restart}" if restart else STORE_PREFIX


def init_from_torchrun(timeout_s: float, device: str = "auto") -> World:
    """Join the world described by torchrun's environment variables (single or multi node);
    ``device`` as in :func:`init_world` (the GPU from ``LOCAL_RANK``)."""
    return init_world(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        init_method="env://",
        timeout_s=timeout_s,
        device=device,
    )


def shutdown() -> None:
    """Leave the world: destroy a process group if this process made one (gloo: no wait
    on other ranks); the store closes with its last reference."""
    if dist.is_initialized():
        dist.destroy_process_group()
