"""The global adapter, checkpointed every round with peft, so a crash loses one round at most."""

from __future__ import annotations

import shutil
from pathlib import Path

from fedsim.events import RoundMetrics
from fedsim.rundir import ADAPTER_DIR
from fedsim.server.callbacks import MethodRun, RoundCallback

__all__ = ["AdapterCheckpoint", "save_adapter"]


def save_adapter(model, path: Path) -> None:
    """Checkpoint the global adapter with peft's ``save_pretrained``, replacing the last one.

    Written beside the target first, so a crash mid-write leaves the previous checkpoint.
    """
    staging = path.with_name(path.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(str(staging))
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)


class AdapterCheckpoint(RoundCallback):
    """Saves the global adapter to ``adapter/`` after every round."""

    def round_recorded(self, run: MethodRun, metrics: RoundMetrics) -> None:
        save_adapter(run.model, run.out / ADAPTER_DIR)
