"""One federated job as seen from one rank: the server's loop or a client process's.

Rank 0 runs :func:`fedsim.server.loop.serve_run`, every other rank
:func:`fedsim.client.loop.participate_run` (docs/architecture.md, "Process model"). The
launcher (:mod:`fedsim.launch`) calls :func:`run_rank` in every process it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fedsim.client.loop import participate_run
from fedsim.config import RunConfig
from fedsim.events import MethodSummary, Observer
from fedsim.server.callbacks import RoundCallback
from fedsim.server.loop import serve_run
from fedsim.task import load_task
from fedsim.transport.world import World

__all__ = ["run_rank"]


def run_rank(
    config: RunConfig,
    world: World,
    observer: Observer | None = None,
    run_dir: Path | None = None,
    callbacks: Sequence[RoundCallback] = (),
) -> list[MethodSummary]:
    """Run every method of ``config`` on this rank; the server returns the summaries.

    Only the server uses ``run_dir``, ``observer`` and ``callbacks`` (extra
    :class:`~fedsim.server.callbacks.RoundCallback` s after the default ones). A client
    process that the server drops returns normally (it logs why).
    """
    torch.set_num_threads(config.threads_per_process)
    task = load_task(config)
    if world.is_server:
        if run_dir is None:
            raise ValueError("run_rank: the server needs a run directory")
        return serve_run(config, world, task, run_dir, observer, callbacks)
    participate_run(config, world, task)
    return []
