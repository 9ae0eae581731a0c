"""A small world of processes on 127.0.0.1 (``init_world``: rendezvous store, relay sockets) for multi-process tests.

Forkserver start: one fresh interpreter imports torch and the test module once (it runs
no torch op, so no threads exist when it forks); the ranks start from it in about a
second instead of importing torch each (spawn: ~15 s on a small machine).
"""

from __future__ import annotations

import socket
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fedsim.transport.world import init_world, shutdown

Worker = Callable[[int, dist.Store, Path], None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, worker: Worker, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    world = init_world(rank=rank, world_size=world_size, local_rank=rank, init_method=f"tcp://127.0.0.1:{port}", timeout_s=60.0)
    try:
        worker(rank, world.store, Path(out_dir))
    except BaseException:
        (Path(out_dir) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        shutdown()


def run_world(module: str, worker: Worker, world_size: int, out_dir: Path, timeout_s: float) -> list[int]:
    """Run ``worker(rank, store, out_dir)`` on every rank; return the exit codes.

    Fails the test if the world outlives ``timeout_s`` or a rank raised (its traceback
    is in the message). ``module``: the test module that defines ``worker``.
    """
    mp.get_context("forkserver").set_forkserver_preload([module])
    context = mp.start_processes(
        _entry, args=(worker, world_size, free_port(), str(out_dir)), nprocs=world_size, join=False,
        start_method="forkserver",
    )
    deadline = time.monotonic() + timeout_s
    while any(p.is_alive() for p in context.processes):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            raise AssertionError(f"the world of {world_size} processes hung for {timeout_s} s")
        time.sleep(0.1)
    errors = {p.name: p.read_text() for p in out_dir.glob("error*.txt")}
    assert not errors, errors
    return [p.exitcode for p in context.processes]
