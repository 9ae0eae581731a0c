"""Starting a job: a local world on one machine, or this rank of a torchrun world.

``fedsim run`` without torchrun around it makes its own world: this process becomes rank 0
(the server, so the CLI can render its progress) and spawns one process per client
(a ``multiprocessing`` forkserver; TCP rendezvous on 127.0.0.1). Under torchrun every
process reads RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* and runs the same code, so single- and
multi-node launches need nothing else.

A client process that dies mid-run is the server's business (it drops it and goes on,
:mod:`fedsim.server.loop`): the local launcher reports it as a warning when the server finished.
Under torchrun the elastic agent stops every worker as soon as one exits non-zero, so
there a dead client ends the run; processes the server drops while alive leave with 0.

SIGINT and SIGTERM belong to the server (:class:`fedsim.resume.InterruptSignals`, in the
launching process and at torchrun's rank 0): it abandons the round in flight, writes what
that round's reporting clients spent, marks the run interrupted and ends the run with
FINISH; the client processes ignore both signals (Ctrl-C reaches the whole process group)
and leave when the server ends the run. The run then stops with
:class:`~fedsim.resume.RunInterrupted` (exit 128 + the signal number) and
``fedsim run --resume RUN_DIR`` continues it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

from fedsim.config import RunConfig, config_from_json
from fedsim.errors import FedsimError
from fedsim.events import MethodSummary, Observer
from fedsim.job import run_rank
from fedsim.resume import InterruptSignals, RunInterrupted
from fedsim.server.callbacks import RoundCallback
from fedsim.transport.relay import RunFinished
from fedsim.transport.world import init_from_torchrun, init_world, shutdown

logger = logging.getLogger(__name__)


class LaunchError(FedsimError, RuntimeError):
    """A rank failed; the message says which and how."""


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configure_process_logging(level: int, rank: int | None = None) -> None:
    """Logging for one process of the job; silences third-party download progress bars."""
    import transformers

    prefix = f"[rank {rank}] " if rank is not None else ""
    # force: importing Opacus already called basicConfig, which would make this one a no-op
    logging.basicConfig(level=level, format=f"{prefix}%(levelname)s %(name)s: %(message)s", force=True)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _client_process(config_json: str, rank: int, world_size: int, init_method: str, log_level: int) -> None:
    """Entry point of a spawned client process (SIGINT/SIGTERM are the server's: ignored here)."""
    ignore_interrupts()
    configure_process_logging(log_level, rank)
    config = config_from_json(config_json)
    world = init_world(
        rank=rank, world_size=world_size, local_rank=rank, init_method=init_method, timeout_s=config.timeout_s, device=config.device,
    )
    try:
        run_rank(config, world)
    except RunFinished as exc:  # the server stopped the run early (interrupted, too few clients): its error says why
        logger.warning("rank %d leaves: %s", rank, exc)
    finally:
        shutdown()


def ignore_interrupts() -> None:
    """A client process leaves when the server ends the run, not on Ctrl-C or SIGTERM."""
    for sig in InterruptSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def server_interrupts() -> contextlib.AbstractContextManager:
    """The server's SIGINT/SIGTERM handler for the run (main thread only; elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return InterruptSignals().installed()


def interrupted(interrupt: KeyboardInterrupt, run_dir: Path) -> RunInterrupted:
    """The run's error for an interruption, saying what was kept and how to continue."""
    return RunInterrupted.of(interrupt, (
        ": the round in flight was abandoned (the ledger holds what its reporting clients spent); "
        f"every completed round is saved. Continue with: fedsim run --resume {run_dir}"
    ))


def client_process_context() -> mp.context.BaseContext:
    """A forkserver that imports torch, transformers, peft and Opacus once for all clients.

    Each client is forked from a process that has imported but never run torch (no
    threads, no CUDA context), which saves every client the ~7 s import on a small
    machine. ``spawn`` where forkserver does not exist (Windows).
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["fedsim.job"])
    return context


def launch_local(
    config: RunConfig, run_dir: Path, observer: Observer | None = None, callbacks: Sequence[RoundCallback] = ()
) -> list[MethodSummary]:
    """Run ``config`` in a local world of 1 server + ``num_clients`` client processes.

    This process is the server: ``observer`` and ``callbacks`` run here (nothing is pickled).
    """
    init_method = f"tcp://127.0.0.1:{free_port()}"
    context = client_process_context()
    log_level = logging.getLogger().getEffectiveLevel()
    clients = [
        context.Process(
            target=_client_process,
            args=(config.to_json(), rank, config.world_size, init_method, log_level),
            name=f"fedsim-client-{rank}",
            daemon=True,
        )
        for rank in range(1, config.world_size)
    ]
    for process in clients:
        process.start()
    try:
        with server_interrupts():
            world = init_world(
                rank=0, world_size=config.world_size, local_rank=0, init_method=init_method, timeout_s=config.timeout_s,
                device=config.device,
            )
            try:
                summaries = run_rank(config, world, observer, run_dir, callbacks)
            finally:
                shutdown()
    except KeyboardInterrupt as interrupt:
        for process in clients:  # the server ended the run with FINISH: they leave (non-zero) on their own
            process.join(10.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)
        raise interrupted(interrupt, run_dir) from None
    except Exception as exc:
        failed = _reap(clients, timeout_s=5.0, dropped=set())
        raise LaunchError(f"the run failed on the server: {exc}" + (f"; {failed}" if failed else "")) from exc
    dropped = {rank for summary in summaries for rank in summary.dropped_processes}
    failed = _reap(clients, timeout_s=60.0, dropped=dropped)
    if failed:
        raise LaunchError(failed)
    return summaries


def _reap(processes: list, timeout_s: float, dropped: set[int]) -> str:
    """Join the client processes (terminating stragglers) and describe any failure.

    A process the server dropped (rank in ``dropped``) is not a failure of the run: its
    exit is logged, and it gets a few seconds, not ``timeout_s``, before it is terminated.
    """
    problems = []
    for rank, process in enumerate(processes, start=1):
        process.join(5.0 if rank in dropped else timeout_s)
        if process.is_alive():
            process.terminate()
            process.join(5.0)
            problem = f"{process.name} did not finish and was terminated"
        elif process.exitcode != 0:
            problem = f"{process.name} exited with code {process.exitcode}"
        else:
            continue
        if rank in dropped:
            logger.warning("%s (the server had dropped it)", problem)
        else:
            problems.append(problem)
    return "; ".join(problems)


def launch_torchrun(
    config: RunConfig, run_dir: Path, observer: Observer | None = None, callbacks: Sequence[RoundCallback] = ()
) -> list[MethodSummary]:
    """Run this process's rank of a torchrun world; rank 0 returns the summaries.

    Only the server uses ``run_dir``, ``observer`` and ``callbacks`` (the CLI gives clients no observer).
    """
    is_server = os.environ.get("RANK", "0") == "0"
    if not is_server:
        ignore_interrupts()
    try:
        with server_interrupts() if is_server else contextlib.nullcontext():
            world = init_from_torchrun(config.timeout_s, config.device)
            try:
                return run_rank(config, world, observer, run_dir, callbacks)
            finally:
                shutdown()
    except KeyboardInterrupt as interrupt:
        raise interrupted(interrupt, run_dir) from None
