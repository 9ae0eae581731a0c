"""What the server saves every round: the global adapter (peft) and what a resume continues from.

:class:`AdapterCheckpoint` keeps ``adapter/`` (peft ``save_pretrained``) at the last
round; :class:`ResumeCheckpoint` then saves every trainable parameter's global value and
commits the round in ``state.json`` (:mod:`fedsim.resume`), so a crash loses one round
at most and ``fedsim run --resume`` continues from the last committed one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsim.events import MethodSummary, RoundMetrics
from fedsim.models.lora_params import parameters_by_name
from fedsim.resume import COMPLETE, RUNNING, MethodState, save_global_state, write_state
from accounting.ledger import fsync_directory
from fedsim.rundir import ADAPTER_DIR
from fedsim.server.callbacks import MethodRun, RoundCallback
from fedsim.server.evaluation import CentralEvaluation

__all__ = ["AdapterCheckpoint", "ResumeCheckpoint", "save_adapter"]


def save_adapter(model, path: Path) -> None:
    """Checkpoint the global adapter with peft's ``save_pretrained``, replacing the last one.

    Written and fsynced beside the target first; the old checkpoint is moved aside
    (``adapter.old``) before the new one takes its name, so a crash leaves a whole
    checkpoint under one of the two names (:func:`fedsim.resume.prepare_method_dir` puts
    ``adapter.old`` back when ``adapter`` is missing).
    """
    staging = path.with_name(path.name + ".partial")
    previous = path.with_name(path.name + ".old")
    if staging.exists():  # never a whole checkpoint
        shutil.rmtree(staging)
    if previous.exists():  # a crash mid-swap: keep the whole one
        shutil.rmtree(previous) if path.exists() else previous.rename(path)
    model.save_pretrained(str(staging))
    for file in staging.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_directory(staging)
    if path.exists():
        path.rename(previous)
    staging.rename(path)
    fsync_directory(path.parent)
    if previous.exists():
        shutil.rmtree(previous)


class AdapterCheckpoint(RoundCallback):
    """Saves the global adapter to ``adapter/`` after every round."""

    def round_recorded(self, run: MethodRun, metrics: RoundMetrics) -> None:
        save_adapter(run.model, run.out / ADAPTER_DIR)


class ResumeCheckpoint(RoundCallback):
    """Commits each round for ``--resume``: the global state, then ``state.json`` (last of the round's files).

    ``evaluation`` is the run's :class:`~fedsim.server.evaluation.CentralEvaluation`, whose
    accuracy before training ``state.json`` keeps, so that a resumed run's summary reports
    the run's, not the resumed model's; ``aborted_rounds`` adds up over the segments.
    """

    def __init__(self, evaluation: CentralEvaluation) -> None:
        self.evaluation = evaluation
        self.state: MethodState | None = None

    def method_started(self, run: MethodRun) -> None:
        if run.resumed is not None:
            previous = run.resumed
            fingerprints = (*previous.ledger_fingerprints, run.ledger.fingerprint)
            self.state = dataclasses.replace(previous, status=RUNNING, interrupted_by=None, ledger_fingerprints=fingerprints)
        else:
            self.state = MethodState(run.method.name, run.start_round - 1, RUNNING, None, self.evaluation.initial_accuracy,
                                     ledger_fingerprints=(run.ledger.fingerprint,))
        write_state(run.out, self.state)

    def round_recorded(self, run: MethodRun, metrics: RoundMetrics) -> None:
        stale = self.state.global_state
        name = save_global_state(run.out, metrics.round, parameters_by_name(run.factors))
        self.state = dataclasses.replace(
            self.state, round=metrics.round, global_state=name, aborted_rounds=self.state.aborted_rounds + metrics.aborted,
        )
        write_state(run.out, self.state)  # the round's commit point
        if stale is not None and stale != name:
            (run.out / stale).unlink(missing_ok=True)

    def method_ended(self, run: MethodRun) -> Mapping[str, Any]:
        fields: dict[str, Any] = {"aborted_rounds": self.state.aborted_rounds}
        if run.resumed is not None and not math.isnan(self.state.initial_accuracy):
            fields["initial_accuracy"] = self.state.initial_accuracy
        return fields

    def summary_recorded(self, run: MethodRun, summary: MethodSummary) -> None:
        self.state = dataclasses.replace(self.state, status=COMPLETE)
        write_state(run.out, self.state)
