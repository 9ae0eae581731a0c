"""The server loop's side effects as callbacks: one small interface, run in list order.

The loop (:mod:`fedsim.server.loop`) only runs rounds; everything it leaves behind
(the ledger and the budgets, central evaluation, ``metrics.jsonl``, the adapter
checkpoint, ``summary.json``, progress events for the CLI) is a :class:`RoundCallback`,
in the spirit of pfl-research's ``callback/`` package. A new side effect (resume state,
an audit, an attack's observer) is a new callback passed to the loop, not an edit of it.

Per method the loop calls, on every callback in order:

1. ``method_started(run)`` once the clients have the initial state;
2. per round, ``round_ended(run, result)``: each returns fields for the round's
   :class:`~fedsim.events.RoundMetrics` (the ledger adds ε, the evaluation accuracy and
   loss); then, once the row is complete, ``round_recorded(run, metrics)``;
3. ``method_ended(run)``: each returns fields for the :class:`~fedsim.events.MethodSummary`;
   then ``summary_recorded(run, summary)``.

Every hook does nothing by default. A callback that raises stops the run (the server's
files of every completed round are already written).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from accounting import Ledger, LedgerRecord
from fedsim.config import RunConfig
from fedsim.events import MethodSummary, Observer, RoundMetrics
from fedsim.methods.registry import Method
from fedsim.resume import MethodState
from accounting.ledger import write_atomically
from fedsim.rundir import METRICS_FILE, SUMMARY_FILE
from fedsim.secure_sum.stages import RoundOutcome
from fedsim.task import Task

__all__ = ["MethodRun", "MetricsToDisk", "ProgressEvents", "RoundCallback", "RoundResult", "SummaryToDisk"]


@dataclass(frozen=True)
class MethodRun:
    """One method's run as the server holds it: what every callback may read.

    ``start_round``: the first round this process runs (1, or the one after the last
    committed round of a resumed run); ``resumed``: that run's ``state.json`` (None for a
    fresh start). The global model already holds the committed state, and the ledger
    already holds every record of the earlier segments.
    """

    config: RunConfig
    task: Task
    method: Method
    model: torch.nn.Module
    factors: Mapping[str, Mapping[str, torch.nn.Parameter]]
    out: Path
    ledger: Ledger
    device: torch.device
    start_round: int = 1
    resumed: Optional[MethodState] = None


@dataclass(frozen=True)
class RoundResult:
    """What one round did: its ledger records, its (merged) secure-sum outcome, its timing.

    ``records``: one per client that reported in each phase, plus client-level records;
    ``train_seconds``: the server's wait for the clients' local training (their reports).
    """

    round: int
    records: Sequence[LedgerRecord]
    outcome: RoundOutcome
    train_seconds: float

    @property
    def clients(self) -> int:
        """Clients that trained and reported (each has a ledger record this round)."""
        return len({r.client for r in self.records if r.client is not None})


class RoundCallback:
    """A side effect of the server loop; override the hooks you need (see the module doc)."""

    def method_started(self, run: MethodRun) -> None:
        """The clients hold the initial state; no round has run."""

    def round_ended(self, run: MethodRun, result: RoundResult) -> Mapping[str, Any]:
        """A round is over: return fields for its metrics row (later callbacks may override)."""
        return {}

    def round_recorded(self, run: MethodRun, metrics: RoundMetrics) -> None:
        """The round's metrics row is complete."""

    def method_ended(self, run: MethodRun) -> Mapping[str, Any]:
        """Every round is over: return fields for the method's summary."""
        return {}

    def summary_recorded(self, run: MethodRun, summary: MethodSummary) -> None:
        """The method's summary is complete."""


class MetricsToDisk(RoundCallback):
    """Appends each round's metrics row to ``metrics.jsonl`` (one JSON object a line, fsynced)."""

    def round_recorded(self, run: MethodRun, metrics: RoundMetrics) -> None:
        with (run.out / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(metrics.to_dict()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class SummaryToDisk(RoundCallback):
    """Writes the method's ``summary.json`` (atomically)."""

    def summary_recorded(self, run: MethodRun, summary: MethodSummary) -> None:
        write_atomically(run.out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2).encode())


class ProgressEvents(RoundCallback):
    """Forwards the run's progress to an :class:`~fedsim.events.Observer` (the CLI renders it)."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def method_started(self, run: MethodRun) -> None:
        self.observer.method_started(run.method.name, run.config.rounds, run.ledger.fingerprint, completed=run.start_round - 1)

    def round_recorded(self, run: MethodRun, metrics: RoundMetrics) -> None:
        self.observer.round_finished(metrics)

    def summary_recorded(self, run: MethodRun, summary: MethodSummary) -> None:
        self.observer.method_finished(summary)
