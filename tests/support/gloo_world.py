"""A small world of processes over gloo on 127.0.0.1 for multi-process tests of the relay.

Forkserver start: one fresh interpreter imports torch and the test module once (it runs
no torch op, so no threads exist when it forks); the ranks start from it in about a
second instead of importing torch each (spawn: ~15 s on a small machine).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fedsim.transport.relay import relay_group

Worker = Callable[[int, dist.ProcessGroup, Path], None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, worker: Worker, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    group = relay_group()
    try:
        worker(rank, group, Path(out_dir))
    except BaseException:
        (Path(out_dir) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def run_world(module: str, worker: Worker, world_size: int, out_dir: Path, timeout_s: float) -> list[int]:
    """Run ``worker(rank, relay_group, out_dir)`` on every rank; return the exit codes.

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
