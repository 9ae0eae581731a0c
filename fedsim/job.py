"""One federated job as seen from one rank: the server's loop and the clients' loop.

Per method, per round (DESIGN.md, "One round"), the server draws the cohort from the
population (:mod:`fedsim.population`; every client process hosts its share of the virtual
clients), then for each phase of the method's round (:mod:`fedsim.algorithms`: one for
most methods, two for DEeR), one secure sum:

1. the server sends every live client process hosting cohort members the global values of
   the method's trainable factors (a ROUND frame, point to point: :mod:`fedsim.relay`);
2. the secure sum starts (:mod:`fedsim.secure_sum`): its key stages (AdvertiseKeys,
   ShareKeys) need no data and run first; when MaskedInputCollection asks for a client's
   input, the client runs the phase's share of the K local DP-SGD steps
   (:class:`~fedsim.client.LocalTrainer`), with client-level DP clips its update and adds
   its noise share (:class:`ClientLevelNoise`),
   reports the mechanism it ran (a REPORT frame) and sends its masked update. The server
   only ever holds masked vectors and their sum; clients may drop out at any stage, and
   the sum is the survivors';
3. if the sum completed, the server applies the survivors' mean update; if it aborted
   (too few survivors), the global model stays as it was and the abort is recorded.
   Either way it appends one ledger record per client that reported (local training
   spent privacy whatever became of the update; a client that left before it was asked
   for input did not train), composes each client's ε with the PRV accountant, evaluates
   on schedule and writes ``metrics.jsonl``; it checkpoints the adapter with peft every
   round, so a crash loses at most the round in flight. A client whose process dies
   before its report has no record: the server cannot know what it ran, and nothing of
   its data left the process.

Faults: a client process that dies, stays silent past a deadline or sends something
malformed is dropped for the rest of the run (with all its clients) and the run goes on
with the others. When too few are left for the protocol, the run stops with
:class:`TooFewClients`; every completed round's files are already written. Nothing waits
on a dropped process: there is no collective after start-up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from accounting import (
    METHOD_NONE,
    BudgetTracker,
    EpsilonBound,
    Ledger,
    LedgerRecord,
    ClientLevelGaussian,
    PoissonSubsampledGaussian,
)
from fedsim.algorithms import Method, get_method, phase_steps
from fedsim.client import ClientShard, DPSettings, LocalTrainer, OptimSettings, RoundReport, secret_generator
from fedsim.client_dp import ClientLevelNoise, noise_share_std, realized_noise_multiplier
from fedsim.config import RunConfig
from fedsim.data import DatasetSplits, load_dataset, partition, prepare_images
from fedsim.evaluation import evaluate
from fedsim.events import MethodSummary, NullObserver, Observer, RoundMetrics
from fedsim.framing import Frame, FrameError, Kind, pack_ids, unpack_ids
from fedsim.lora_state import all_factor_params
from fedsim.models import ModelSpec, build_model, build_tokenizer, factor_parameters, tokenize
from fedsim.relay import ClientRelay, Evicted, ServerRelay
from fedsim.population import CohortSampling, Population, cohort_sampling
from fedsim.rundir import ADAPTER_DIR, LEDGER_FILE, METRICS_FILE, SUMMARY_FILE, method_run_dir
from fedsim.runtime import SERVER_RANK, World
from fedsim.secure_sum import (
    SecureSumConfig,
    client_secure_sum,
    dropout_plan,
    reply_limit,
    secure_sum_config,
    server_secure_sum,
)
from fedsim.stages import RoundOutcome
from fedsim.state import add_flat, assign_flat, flatten
from fedsim.wire import pack_report, pack_vector, unpack_report, unpack_vector
from secagg.params import SESSION_BYTES

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Task:
    """A model family and the tensors fed to it."""

    spec: ModelSpec
    data: DatasetSplits


def model_spec(config: RunConfig, num_classes: int) -> ModelSpec:
    """The model this config trains (family from the dataset's modality)."""
    return ModelSpec(
        family="text" if config.modality == "text" else "timm",
        name=config.model,
        num_classes=num_classes,
        pretrained=config.pretrained,
        img_size=config.img_size if config.modality == "image" else None,
        model_kwargs=tuple(sorted(config.model_kwargs.items())),
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        max_length=config.max_length,
        init_seed=config.seed,
    )


def model_inputs(task: Task, data, config: RunConfig) -> tuple[torch.Tensor, ...]:
    """Tokenize texts or resize images into the tensors the model takes."""
    if task.data.modality == "text":
        return tokenize(build_tokenizer(task.spec), list(data.texts), config.max_length)
    return (prepare_images(data.images, config.img_size),)


class TooFewClients(RuntimeError):
    """Too few clients are left for the secure-aggregation protocol to run another round."""


def run_rank(config: RunConfig, world: World, observer: Observer | None = None, run_dir: Path | None = None) -> list[MethodSummary]:
    """Run every method of ``config`` on this rank; the server returns the summaries.

    A client process that the server drops returns normally (it logs why).
    """
    torch.set_num_threads(config.threads_per_process)
    observer = observer or NullObserver()
    data = load_dataset(config.dataset, seed=config.seed, limit=config.limit)
    task = Task(model_spec(config, len(data.train.classes)), data)
    if world.is_server:
        assert run_dir is not None, "the server needs a run directory"
        return serve_run(config, world, task, run_dir, observer)
    participate_run(config, world, task)
    return []


def build_method(task: Task, method_name: str, world: World) -> tuple[Method, torch.nn.Module, dict]:
    """A fresh model of the task for one method (same seed on every rank) and its LoRA factors."""
    method = get_method(method_name)
    model = build_model(task.spec).to(world.device)
    return method, model, factor_parameters(model)


def serve_run(config: RunConfig, world: World, task: Task, run_dir: Path, observer: Observer) -> list[MethodSummary]:
    """The server rank: one :func:`serve` per method, then FINISH to the live client processes.

    Whatever happens, the relay is closed with bounded waits only.
    """
    relay = ServerRelay(world.relay_group, range(1, world.world_size), max_body_bytes=1 << 20)
    summaries = []
    try:
        for method_name in config.methods:
            method, model, factors = build_method(task, method_name, world)
            out = method_run_dir(run_dir, config.methods, method_name)
            summaries.append(serve(config, relay, world, task, method, model, factors, out, observer))
    except BaseException as exc:
        relay.close(f"the server stopped the run: {exc}", timeout_s=10.0)
        raise
    relay.close("the run is complete", timeout_s=min(60.0, config.timeout_s))
    return summaries


def participate_run(config: RunConfig, world: World, task: Task) -> None:
    """A client rank: one :func:`participate` per method, until the server says FINISH.

    If the server drops this process it leaves quietly (the server logged why); any
    other failure is sent to the server (FAIL) before it propagates.
    """
    relay = ClientRelay(world.relay_group, SERVER_RANK, timeout_s=2 * config.timeout_s)
    try:
        for method_name in config.methods:
            method, model, factors = build_method(task, method_name, world)
            participate(config, relay, world, task, method, model, factors)
        relay.receive(Kind.FINISH)
    except Evicted as exc:
        logger.warning("rank %d leaves: %s", world.rank, exc)
        relay.close()
        return
    except BaseException as exc:
        relay.close(failure=f"{type(exc).__name__}: {exc}")
        raise
    relay.close()


def participate(config: RunConfig, relay: ClientRelay, world: World, task: Task, method: Method, model, factors) -> None:
    """A client process: each round, train the hosted clients asked to and send masked updates."""
    setup = relay.receive(Kind.SETUP)
    params = all_factor_params(factors)
    every = sorted(params)
    session = bytes(setup.entries.get(0, b""))
    if len(session) != SESSION_BYTES:
        raise FrameError(f"SETUP carries a {len(session)}-byte session id, expected {SESSION_BYTES}")
    initial = unpack_vector(setup.entries.get(1, b""), sum(params[n].numel() for n in every), "initial state")
    assign_flat(params, every, initial)
    population = Population(config.population_size, world.num_clients)
    hosted = population.hosted_by(world.rank)
    trainer = LocalTrainer(
        model=model,
        factors=factors,
        method=method,
        dp=DPSettings(config.batch_size, config.noise_multiplier, config.max_grad_norm),
        optim=OptimSettings(config.optimizer, config.lr, config.head_lr, config.b_lr_ratio, config.smoothing),
        device=world.device,
    )
    shards = hosted_shards(config, task, population, hosted)
    all_names = method.all_sent_names(factors)
    dim_all = sum(params[n].numel() for n in all_names)
    privatizer = None
    if config.client_noise_multiplier > 0:
        planned = cohort_sampling(config).expected_size(config.population_size)
        std = noise_share_std(config.client_noise_multiplier, config.client_clip, planned)
        privatizer = ClientLevelNoise(config.client_clip, std, method, factors, secret_generator(torch.device("cpu")))
    secagg = secure_sum_config(config)
    dropouts = dropout_plan(config)
    rounding = secret_generator(torch.device("cpu"))  # stochastic rounding in the fixed-point encoding
    phases = len(method.phases(1))
    while (frame := relay.receive(Kind.ROUND, Kind.DONE)).kind == Kind.ROUND:
        round_idx, phase_idx = round_and_phase(frame.round, phases)
        phase = method.phases(round_idx)[phase_idx]
        steps = phase_steps(config.local_steps, phases)[phase_idx]
        global_vector = unpack_vector(frame.entries.get(0, b""), dim_all, f"round {round_idx} global state").to(world.device)
        selected = unpack_ids(frame.entries.get(1, b""), "clients to train")

        def train(client_ids: list[int], exchange: int = frame.round, phase=phase, steps: int = steps, global_vector=global_vector) -> dict[int, torch.Tensor]:
            """Local training of the clients the protocol asks for input, then their REPORT."""
            updates, reports = {}, {}
            for cid in client_ids:
                if cid not in shards:
                    raise FrameError(f"the server asked for the input of client {cid}, not hosted here")
                update, report = trainer.train_phase(shards[cid], global_vector, phase, steps)
                if privatizer is not None:
                    update = privatizer.apply(update, phase)
                updates[cid] = update.cpu()
                reports[cid] = pack_report(report)
            relay.send(Frame(Kind.REPORT, exchange, entries=reports))
            return updates

        client_secure_sum(
            relay, selected, train, session=session, round_idx=frame.round,
            dim=sum(params[n].numel() for n in phase.sent_names(factors)),
            config=secagg, generator=rounding, dropouts=dropouts,
        )


def hosted_shards(config: RunConfig, task: Task, population: Population, hosted: Sequence[int]) -> dict[int, ClientShard]:
    """The records of the clients this process hosts: the population's seeded partition, tokenized once."""
    labels = task.data.train.labels
    indices = partition(labels.numpy(), population.size, scheme=config.partition, alpha=config.dirichlet_alpha, seed=config.seed)
    inputs = model_inputs(task, task.data.train, config)
    return {
        cid: ClientShard.build(cid, tuple(x[indices[cid - 1]] for x in inputs), labels[indices[cid - 1]], config.batch_size)
        for cid in hosted
    }


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


def serve(
    config: RunConfig,
    relay: ServerRelay,
    world: World,
    task: Task,
    method: Method,
    model,
    factors,
    out: Path,
    observer: Observer,
) -> MethodSummary:
    """The server for one method: send, securely sum, update, account, evaluate, record."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / LEDGER_FILE)
    metrics_path = out / METRICS_FILE
    session = os.urandom(SESSION_BYTES)  # fresh per method: no message replays across methods
    params = all_factor_params(factors)
    setup = Frame(Kind.SETUP, entries={0: session, 1: pack_vector(flatten(params, sorted(params)))})
    for rank in relay.live:
        relay.send(rank, setup)
    all_names = method.all_sent_names(factors)
    secagg = secure_sum_config(config)
    population = Population(config.population_size, world.num_clients)
    sampling = cohort_sampling(config)
    planned = sampling.expected_size(population.size)
    hosted_max = len(population.hosted_by(1))
    relay.set_max_body_bytes(reply_limit(sum(params[n].numel() for n in all_names), cohort=population.size, hosted=hosted_max))
    test_inputs = model_inputs(task, task.data.test, config)
    test_labels = task.data.test.labels
    initial_accuracy, loss = evaluate(model, test_inputs, test_labels, device=world.device)
    accuracy = initial_accuracy
    budgets = BudgetTracker(config.delta)
    worst = EpsilonBound(0.0, 0.0, 0.0, config.delta, METHOD_NONE)  # nothing released yet
    worst_rdp = 0.0
    client_level: float | None = None  # the population's client-level ε, when client-level DP is on
    aborted_rounds = 0
    observer.method_started(method.name, config.rounds, ledger.fingerprint)
    for round_idx in range(1, config.rounds + 1):
        round_start = time.perf_counter()
        members = set(sampling.sample(population.size))
        hosts = {rank: ids for rank in relay.live if (ids := tuple(c for c in population.hosted_by(rank) if c in members))}
        outcomes, round_records = [], []
        timings = {"train": 0.0, "eval": 0.0}
        phases = method.phases(round_idx)
        for phase_idx, (phase, steps) in enumerate(zip(phases, phase_steps(config.local_steps, len(phases)))):
            exchange = exchange_index(round_idx, phase_idx, len(phases))
            hosts = {rank: ids for rank, ids in hosts.items() if rank in relay.live}
            require_enough_clients(secagg, hosts, relay, round_idx)
            names = phase.sent_names(factors)
            vector = pack_vector(flatten(params, all_names))
            for rank, clients in hosts.items():
                relay.send(rank, Frame(Kind.ROUND, exchange, entries={0: vector, 1: pack_ids(clients)}))
            reports: dict[int, RoundReport] = {}

            def await_training(ranks: list[int], exchange: int = exchange, steps: int = steps) -> None:
                """Clients train when asked for their masked input: wait (timeout_s) for their reports."""
                waited = time.perf_counter()
                reports.update(gather_reports(relay, {r: hosts[r] for r in ranks}, exchange, steps, config.timeout_s))
                timings["train"] += time.perf_counter() - waited

            cohort = tuple(sorted(c for ids in hosts.values() for c in ids))
            result = server_secure_sum(
                relay, hosts, session=session, round_idx=exchange, cohort=cohort,
                dim=sum(params[n].numel() for n in names), config=secagg, before_input=await_training,
            )
            outcomes.append(result.outcome)
            if result.mean is not None:
                add_flat(params, names, result.mean)
            round_records += [
                LedgerRecord(
                    round=round_idx,
                    client=r.client,
                    mechanism=PoissonSubsampledGaussian(r.noise_multiplier, r.sample_rate, r.steps),
                    delta=config.delta,
                )
                for r in sorted(reports.values(), key=lambda r: r.client)
            ]
            if config.client_noise_multiplier > 0 and not result.outcome.aborted:
                round_records.append(client_level_record(config, round_idx, sampling, planned, population.size, len(result.outcome.survivors)))
        outcome = merge_outcomes(outcomes)
        ledger.append(round_records)
        snapshot = budgets.add(round_records)
        if snapshot.worst() is not None:
            worst, worst_rdp = snapshot.worst().prv, snapshot.worst().rdp
        if snapshot.population is not None:
            client_level = snapshot.population.prv.upper
        evaluated = round_idx % config.eval_every == 0 or round_idx == config.rounds
        if evaluated:
            waited = time.perf_counter()
            accuracy, loss = evaluate(model, test_inputs, test_labels, device=world.device)
            timings["eval"] = time.perf_counter() - waited
        row = RoundMetrics(
            method=method.name,
            round=round_idx,
            accuracy=accuracy if evaluated else None,
            loss=loss if evaluated else None,
            epsilon=worst.upper,
            epsilon_rdp=worst_rdp,
            delta=config.delta,
            clients=len({r.client for r in round_records if r.client is not None}),
            seconds=time.perf_counter() - round_start,
            train_seconds=timings["train"],
            eval_seconds=timings["eval"],
            survivors=len(outcome.survivors),
            dropped=dict(outcome.dropped),
            aborted=outcome.aborted,
            abort_reason=outcome.abort_reason,
        )
        aborted_rounds += outcome.aborted
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(row.to_dict()) + "\n")
        save_adapter(model, out / ADAPTER_DIR)
        observer.round_finished(row)
    for rank in relay.live:
        relay.send(rank, Frame(Kind.DONE))
    summary = MethodSummary(
        method=method.name,
        rounds=config.rounds,
        initial_accuracy=initial_accuracy,
        accuracy=accuracy,
        loss=loss,
        epsilon=worst.upper,
        epsilon_method=worst.method,
        epsilon_rdp=worst_rdp,
        client_level_epsilon=client_level,
        delta=config.delta,
        run_dir=str(out),
        ledger_fingerprint=ledger.fingerprint,
        seconds=time.perf_counter() - started,
        aborted_rounds=aborted_rounds,
        dropped_processes=dict(relay.dropped),
    )
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2))
    observer.method_finished(summary)
    return summary


def exchange_index(round_idx: int, phase_idx: int, phases: int) -> int:
    """The protocol round of one phase: a fresh index per secure sum, so no message replays across phases."""
    return (round_idx - 1) * phases + phase_idx + 1


def round_and_phase(exchange: int, phases: int) -> tuple[int, int]:
    """Inverse of :func:`exchange_index`: (round, phase index)."""
    round_idx, phase_idx = divmod(exchange - 1, phases)
    return round_idx + 1, phase_idx


def client_level_record(config: RunConfig, round_idx: int, sampling: CohortSampling, planned: int, population: int, survivors: int) -> LedgerRecord:
    """The population's client-level release of one secure sum, at the noise the survivors added."""
    return LedgerRecord(
        round=round_idx,
        client=None,
        mechanism=ClientLevelGaussian(
            realized_noise_multiplier(config.client_noise_multiplier, planned, survivors),
            cohort_size=planned,
            population=population,
            steps=1,
            sampling=sampling.accounting_name,
        ),
        delta=config.delta,
    )


def merge_outcomes(outcomes: Sequence[RoundOutcome]) -> RoundOutcome:
    """One round's outcome from its phases': aborted if any phase aborted, survivors of the last."""
    dropped: dict[str, tuple[int, ...]] = {}
    for outcome in outcomes:
        for stage, ids in outcome.dropped.items():
            dropped[stage] = tuple(sorted(set(dropped.get(stage, ())) | set(ids)))
    aborted = [o for o in outcomes if o.aborted]
    last = outcomes[-1]
    return RoundOutcome(
        cohort=outcomes[0].cohort,
        survivors=() if aborted else last.survivors,
        aborted=bool(aborted),
        abort_reason="; ".join(o.abort_reason or "" for o in aborted) or None,
        dropped=dropped,
    )


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


def gather_reports(
    relay: ServerRelay, hosts: Mapping[int, Sequence[int]], round_idx: int, max_steps: int, timeout_s: float
) -> dict[int, RoundReport]:
    """Each live process's REPORT (what its clients ran); a malformed one drops the process."""
    reports: dict[int, RoundReport] = {}
    for rank, frame in relay.gather(list(hosts), Kind.REPORT, round_idx, "", timeout_s).items():
        try:
            foreign = sorted(set(frame.entries) - set(hosts[rank]))
            if foreign:
                raise FrameError(f"reports for clients {foreign} it does not host")
            reports.update({cid: unpack_report(data, cid, max_steps) for cid, data in frame.entries.items()})
        except FrameError as exc:
            relay.drop(rank, f"malformed REPORT in round {round_idx}: {exc}")
    return dict(sorted(reports.items()))
