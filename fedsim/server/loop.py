"""The server's loop (rank 0): per method, per round, per phase, one secure sum.

Per method, per round (docs/architecture.md, "One round"), the server draws the cohort from
the population (:mod:`fedsim.population`; every client process hosts its share of the
virtual clients), then for each phase of the method's round (:mod:`fedsim.methods.registry`:
one for most methods, two for DEeR), one secure sum:

1. the server sends every live client process hosting cohort members the global values of
   the method's trainable factors (a ROUND frame, point to point:
   :mod:`fedsim.transport.relay`);
2. the secure sum starts (:mod:`fedsim.secure_sum.exchange`): its key stages (AdvertiseKeys,
   ShareKeys) need no data and run first; when MaskedInputCollection asks for a client's
   input, the client process trains it (:mod:`fedsim.client.loop`) and reports the
   mechanism it ran (a REPORT frame) before it sends the masked update. The server only
   ever holds masked vectors and their sum; clients may drop out at any stage, and the
   sum is the survivors';
3. if the sum completed, the server applies the survivors' mean update; if it aborted
   (too few survivors), the global model stays as it was and the abort is recorded.

Then the round's callbacks (:mod:`fedsim.server.callbacks`) record it: ledger and budgets,
evaluation on schedule, ``metrics.jsonl``, the adapter checkpoint, progress.

Resume (:mod:`fedsim.resume`): a method whose folder holds a previous run's files
continues from its last committed round (``state.json``): the global state is loaded
before SETUP, so the client processes start from it and need nothing else; the ledger
continues in a new segment; the rounds are the remaining ones. A method that had
completed all its rounds is only set up and finished (the client processes walk through
every method of the config). SIGINT/SIGTERM (:class:`~fedsim.resume.RunInterrupted`)
abandon the round in flight: the records of its clients that reported are written,
nothing else of it, and ``state.json`` says ``interrupted``; a signal while a round is
being recorded waits until it is committed.

Faults: a client process that dies, stays silent past a deadline or sends something
malformed is dropped for the rest of the run (with all its clients) and the run goes on
with the others. When too few are left for the protocol, the run stops with
:class:`TooFewClients`; every completed round's files are already written. Nothing waits
on a dropped process: there is no collective after start-up.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accounting import Ledger, LedgerError
from fedsim.config import RunConfig
from fedsim.dp.randomness import session_id
from fedsim.errors import FedsimError
from fedsim.events import MethodSummary, Observer, RoundMetrics
from fedsim.methods.registry import Phase, phase_steps
from fedsim.models.lora_params import parameters_by_name
from fedsim.population import Population, cohort_sampling
from fedsim.resume import (
    COMPLETE,
    MethodState,
    critical_section,
    ledger_to_continue,
    load_global_state,
    mark_interrupted,
    prepare_method_dir,
    read_state,
    read_summary,
    signal_name,
)
from fedsim.config import ConfigError
from fedsim.rundir import LEDGER_FILE, method_run_dir
from fedsim.secure_sum.config import SecureSumConfig, reply_limit, secure_sum_config, stage_limits
from fedsim.secure_sum.identity import read_verify_keys
from fedsim.secure_sum.exchange import exchange_index, server_secure_sum
from fedsim.server.callbacks import MethodRun, MetricsToDisk, ProgressEvents, RoundCallback, RoundResult, SummaryToDisk
from fedsim.server.checkpoint import AdapterCheckpoint, ResumeCheckpoint
from fedsim.server.evaluation import CentralEvaluation
from fedsim.server.records import PrivacyLedger, client_level_record, gather_reports, merge_outcomes, sample_level_records
from fedsim.task import Task, client_partition, client_round_steps, fresh_model
from fedsim.transport.framing import Frame, pack_ids
from fedsim.transport.payloads import RoundReport, pack_vector
from fedsim.transport.relay import ServerRelay
from fedsim.transport.vectors import add_flat, flat_size, flatten
from fedsim.transport.vocabulary import Kind, RoundEntry, SetupEntry
from fedsim.transport.world import World
from secagg.threat_models import ACTIVE

__all__ = ["TooFewClients", "default_callbacks", "serve_run"]

logger = logging.getLogger(__name__)


class TooFewClients(FedsimError, RuntimeError):
    """Too few clients are left for the secure-aggregation protocol to run another round."""


def default_callbacks(config: RunConfig, observer: Observer | None) -> list[RoundCallback]:
    """The side effects of every run, in order: ledger, evaluation, metrics, adapter, the round's commit, summary, progress."""
    evaluation = CentralEvaluation()
    callbacks = [PrivacyLedger(config.delta), evaluation, MetricsToDisk(), AdapterCheckpoint(), ResumeCheckpoint(evaluation), SummaryToDisk()]
    return callbacks + ([ProgressEvents(observer)] if observer is not None else [])


def serve_run(
    config: RunConfig,
    world: World,
    task: Task,
    run_dir: Path,
    observer: Observer | None = None,
    callbacks: Sequence[RoundCallback] = (),
) -> list[MethodSummary]:
    """The server rank: every method of ``config`` in turn, then FINISH to the live client processes.

    ``callbacks`` run after the default ones (:func:`default_callbacks`), for every method.
    A method whose folder in ``run_dir`` holds a previous run's files is resumed (module
    doc). Whatever happens, the relay is closed with bounded waits only.
    """
    relay = ServerRelay(world.store, range(1, world.world_size), max_body_bytes=1 << 20)
    summaries = []
    try:
        verify_keys = None
        if config.secagg_threat_model == ACTIVE:  # the PKI: from the rendezvous store, not from clients' messages
            verify_keys = read_verify_keys(world.store, range(1, config.population_size + 1), config.timeout_s)
        for method_name in config.methods:
            out = method_run_dir(run_dir, config.methods, method_name)
            state, ledger = read_state(out), ledger_to_continue(out)
            if state is not None and state.status == COMPLETE and state.round >= config.rounds:
                MethodServer(config, world, task, relay, method_name, out, verify_keys=verify_keys).walk_through()
                summaries.append(read_summary(out))
                continue
            if state is not None or ledger is not None:
                prepare_method_dir(out, state.round if state is not None else 0)
            server = MethodServer(config, world, task, relay, method_name, out, verify_keys, resumed=state, continue_ledger=ledger is not None)
            try:
                summaries.append(server.serve([*default_callbacks(config, observer), *callbacks]))
            except KeyboardInterrupt as interrupt:  # SIGINT/SIGTERM (fedsim.resume.interruption) or a plain Ctrl-C
                mark_interrupted(out, method_name, signal_name(interrupt))
                raise
    except BaseException as exc:
        relay.close(f"the server stopped the run: {exc}", timeout_s=10.0)
        raise
    relay.close("the run is complete", timeout_s=min(60.0, config.timeout_s))
    return summaries


@dataclass
class TrainingWait:
    """The ``before_input`` hook of one phase: wait (``timeout_s``) for the reports of the ranks asked for input.

    Clients train when the protocol asks for their masked input; a malformed report drops
    its process (:func:`~fedsim.server.records.gather_reports`).
    """

    relay: ServerRelay
    hosts: Mapping[int, Sequence[int]]
    exchange: int
    steps: Mapping[int, int]  # this phase's steps of each cohort member (K split over phases, or its epochs')
    timeout_s: float
    reports: dict[int, RoundReport] = field(default_factory=dict)
    seconds: float = 0.0

    def __call__(self, ranks: list[int]) -> None:
        waited = time.perf_counter()
        self.reports.update(gather_reports(self.relay, {r: self.hosts[r] for r in ranks}, self.exchange, self.steps, self.timeout_s))
        self.seconds += time.perf_counter() - waited


class MethodServer:
    """The server for one method: send, securely sum, update; the callbacks account, evaluate, record."""

    def __init__(
        self, config: RunConfig, world: World, task: Task, relay: ServerRelay, method_name: str, out: Path,
        verify_keys: Mapping[int, bytes] | None = None, resumed: MethodState | None = None, continue_ledger: bool = False,
    ) -> None:
        method, model, factors = fresh_model(task, method_name, world.device)
        out.mkdir(parents=True, exist_ok=True)
        self.params = parameters_by_name(factors)
        if resumed is not None and resumed.global_state is not None:
            load_global_state(out, resumed, self.params)
        try:
            ledger = Ledger.resume(out / LEDGER_FILE) if continue_ledger else Ledger(out / LEDGER_FILE)
        except LedgerError as exc:
            raise ConfigError("resume", str(out / LEDGER_FILE), f"a ledger that can be continued ({exc})") from None
        start = resumed.round + 1 if resumed is not None else 1
        self.run = MethodRun(config, task, method, model, factors, out, ledger, world.device, start, resumed)
        self.relay = relay
        self.all_names = method.all_sent_names(factors)
        self.secagg: SecureSumConfig = secure_sum_config(config)
        self.population = Population(config.population_size, world.num_clients)
        self.sampling = cohort_sampling(config)
        phases = len(method.phases(1))
        self.round_steps = {  # each client's steps per round: K, or ceil(local_epochs·n_i/B)
            cid: client_round_steps(config, len(records), phases)
            for cid, records in enumerate(client_partition(config, task), start=1)
        }
        self.session = session_id()  # fresh per method: no message replays across methods
        self.verify_keys = verify_keys

    def setup(self) -> None:
        """SETUP to every live process: the session id and every trainable parameter's global value."""
        setup = Frame(Kind.SETUP, entries={
            SetupEntry.SESSION: self.session,
            SetupEntry.INITIAL_STATE: pack_vector(flatten(self.params, sorted(self.params))),
        })
        for rank in self.relay.live:
            self.relay.send(rank, setup)

    def walk_through(self) -> None:
        """A method that had completed its rounds: SETUP then DONE, so the client processes move to the next."""
        self.setup()
        for rank in self.relay.live:
            self.relay.send(rank, Frame(Kind.DONE))

    def serve(self, callbacks: Sequence[RoundCallback]) -> MethodSummary:
        """Run every remaining round of the method; the summary the callbacks completed.

        An interruption (``KeyboardInterrupt``: :func:`fedsim.resume.interruption`) in a round writes the ledger records of
        its clients that reported, then propagates; the round's recording (callbacks) is a
        critical section, so an interruption there waits until the round is committed.
        """
        started = time.perf_counter()
        run, config = self.run, self.run.config
        self.setup()
        hosted_max = len(self.population.hosted_by(1))
        dim = self.secagg.ring_dim(flat_size(self.params, self.all_names))
        self.relay.set_max_body_bytes(reply_limit(dim, cohort=self.population.size, hosted=hosted_max))
        self.relay.set_stage_limits(stage_limits(dim, cohort=self.population.size, hosted=hosted_max))
        with critical_section():
            for callback in callbacks:
                callback.method_started(run)
        aborted_rounds = 0
        for round_idx in range(run.start_round, config.rounds + 1):
            round_start = time.perf_counter()
            try:
                result = self.run_round(round_idx)
            except KeyboardInterrupt as interrupt:
                abandoned = getattr(interrupt, "abandoned", ())
                with critical_section():
                    run.ledger.append(abandoned)
                logger.warning("round %d abandoned (%s): %d ledger record(s) written for the clients that reported",
                               round_idx, signal_name(interrupt), len(abandoned))
                raise
            with critical_section():
                fields: dict[str, Any] = {}
                for callback in callbacks:
                    fields.update(callback.round_ended(run, result))
                metrics = round_metrics(run, result, fields, seconds=time.perf_counter() - round_start)
                for callback in callbacks:
                    callback.round_recorded(run, metrics)
            aborted_rounds += result.outcome.aborted
        for rank in self.relay.live:
            self.relay.send(rank, Frame(Kind.DONE))
        fields = {}
        for callback in callbacks:
            fields.update(callback.method_ended(run))
        measured = {
            "method": run.method.name,
            "rounds": config.rounds,
            "run_dir": str(run.out),
            "seconds": time.perf_counter() - started,
            "aborted_rounds": aborted_rounds,
            "dropped_processes": dict(self.relay.dropped),
        }
        summary = record(MethodSummary, measured, fields)
        for callback in callbacks:
            callback.summary_recorded(run, summary)
        return summary

    def run_round(self, round_idx: int) -> RoundResult:
        """One round: the cohort, then one secure sum per phase; its records and merged outcome."""
        config = self.run.config
        members = set(self.sampling.sample(self.population.size))
        hosts = {
            rank: ids for rank in self.relay.live if (ids := tuple(c for c in self.population.hosted_by(rank) if c in members))
        }
        phases = self.run.method.phases(round_idx)
        outcomes, records, train_seconds = [], [], 0.0
        wait: TrainingWait | None = None  # the phase in flight, whose reports are not in records yet
        try:
            for phase_idx, phase in enumerate(phases):
                hosts = {rank: ids for rank, ids in hosts.items() if rank in self.relay.live}
                require_enough_clients(self.secagg, hosts, self.relay, round_idx)
                steps = {cid: phase_steps(self.round_steps[cid], len(phases))[phase_idx] for cid in members}
                wait = TrainingWait(self.relay, hosts, exchange_index(round_idx, phase_idx, len(phases)), steps, config.timeout_s)
                outcome = self.run_phase(phase, hosts, wait)
                with critical_section():  # the phase's reports move into records at once
                    outcomes.append(outcome)
                    train_seconds += wait.seconds
                    records += sample_level_records(round_idx, wait.reports, config.delta)
                    wait = None
                    if self.secagg.client_level and (outcome.corrupted or not outcome.aborted):
                        records.append(client_level_record(
                            round_idx, params=self.secagg.skellam(flat_size(self.params, phase.sent_names(self.run.factors)), len(outcome.cohort)),
                            sampling=self.sampling, population=self.population.size, survivors=outcome.survivors, delta=config.delta,
                        ))
        except KeyboardInterrupt as interrupt:  # what the reports that arrived ran spent privacy: it is recorded
            in_flight = sample_level_records(round_idx, wait.reports, config.delta) if wait is not None else []
            interrupt.abandoned = (*records, *in_flight)
            raise
        return RoundResult(round_idx, tuple(records), merge_outcomes(outcomes), train_seconds)

    def run_phase(self, phase: Phase, hosts: Mapping[int, Sequence[int]], wait: TrainingWait):
        """Send the global state to the cohort's processes, run one secure sum, apply the survivors' mean."""
        names = phase.sent_names(self.run.factors)
        vector = pack_vector(flatten(self.params, self.all_names))
        for rank, clients in hosts.items():
            self.relay.send(rank, Frame(Kind.ROUND, wait.exchange, entries={
                RoundEntry.GLOBAL_STATE: vector, RoundEntry.CLIENTS: pack_ids(clients),
            }))
        result = server_secure_sum(
            self.relay, hosts, session=self.session, round_idx=wait.exchange,
            cohort=tuple(sorted(c for ids in hosts.values() for c in ids)),
            dim=flat_size(self.params, names), config=self.secagg, before_input=wait, verify_keys=self.verify_keys,
        )
        if result.mean is not None:
            add_flat(self.params, names, result.mean)
        return result.outcome


def round_metrics(run: MethodRun, result: RoundResult, fields: Mapping[str, Any], seconds: float) -> RoundMetrics:
    """The round's metrics row: what the loop measured, then the callbacks' fields."""
    outcome = result.outcome
    measured = {
        "method": run.method.name,
        "round": result.round,
        "clients": result.clients,
        "seconds": seconds,
        "train_seconds": result.train_seconds,
        "survivors": len(outcome.survivors),
        "dropped": dict(outcome.dropped),
        "aborted": outcome.aborted,
        "abort_reason": outcome.abort_reason,
        "corrupted": outcome.corrupted,
        "rejections": tuple(
            {"client": client, "stage": stage, "verdict": verdict, "reason": reason}
            for client, stage, reason, verdict in outcome.rejections
        ),
        "disputes": tuple({"clients": [u, v], "reason": reason} for u, v, reason in outcome.disputes),
    }
    return record(RoundMetrics, measured, fields)


def record(kind: type, measured: Mapping[str, Any], fields: Mapping[str, Any]):
    """A ``kind`` (RoundMetrics or MethodSummary) of the loop's figures, overridden by the callbacks' fields."""
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(kind)})
    if unknown:
        raise TypeError(f"callbacks returned {unknown}, which {kind.__name__} has no field for")
    return kind(**{**measured, **fields})


def require_enough_clients(secagg: SecureSumConfig, hosts: Mapping[int, Sequence[int]], relay: ServerRelay, round_idx: int) -> None:
    """Raise :class:`TooFewClients` unless the live processes' clients can run the protocol."""
    count = sum(len(ids) for ids in hosts.values())
    try:
        secagg.shape(count)
    except ValueError as exc:
        lost = "; ".join(f"rank {rank}: {why}" for rank, why in relay.dropped.items()) or "none"
        raise TooFewClients(
            f"round {round_idx} cannot run: {count} client(s) left on live processes and the secure "
            f"aggregation protocol refuses them ({exc}). Dropped processes: {lost}"
        ) from None
