"""One federated job as seen from one rank: the server's loop and the clients' loop.

Per method, per round (DESIGN.md, "One round"):

1. the server broadcasts the global values of the factors this method sends;
2. every client runs K local DP-SGD steps (:class:`~fedsim.client.LocalClient`);
3. the clients' updates are summed under pairwise masks (:mod:`fedsim.secure_sum`): the
   server only ever holds masked vectors and their sum;
4. the server applies the mean update, appends one ledger record per client (the mechanism
   the client ran), composes each client's ε with the PRV accountant, evaluates on schedule
   and writes ``metrics.jsonl``; it checkpoints the adapter with peft every round, so a
   crash loses at most the round in flight.
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
import torch.distributed as dist

from accounting import (
    METHOD_NONE,
    EpsilonBound,
    Ledger,
    LedgerRecord,
    PoissonSubsampledGaussian,
    client_mechanisms,
    prv_epsilon,
)
from fedsim.algorithms import Method, get_method
from fedsim.client import DPSettings, LocalClient, OptimSettings, RoundReport, secret_generator
from fedsim.config import RunConfig
from fedsim.data import DatasetSplits, load_dataset, partition, prepare_images, subset
from fedsim.evaluation import evaluate
from fedsim.events import MethodSummary, NullObserver, Observer, RoundMetrics
from fedsim.models import ModelSpec, build_model, build_tokenizer, factor_parameters, tokenize
from fedsim.rundir import ADAPTER_DIR, LEDGER_FILE, METRICS_FILE, SUMMARY_FILE, method_run_dir
from fedsim.runtime import SERVER_RANK, World
from fedsim.secure_sum import SecureSumConfig, client_secure_sum, server_secure_sum
from fedsim.state import add_flat, assign_flat, flatten

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


def all_factor_params(factors: Mapping[str, Mapping[str, torch.nn.Parameter]]) -> dict[str, torch.nn.Parameter]:
    return {name: p for named in factors.values() for name, p in named.items()}


def run_rank(config: RunConfig, world: World, observer: Observer | None = None, run_dir: Path | None = None) -> list[MethodSummary]:
    """Run every method of ``config`` on this rank; the server returns the summaries."""
    torch.set_num_threads(config.threads_per_process)
    observer = observer or NullObserver()
    data = load_dataset(config.dataset, seed=config.seed, limit=config.limit)
    task = Task(model_spec(config, len(data.train.classes)), data)
    summaries = []
    for method_name in config.methods:
        method = get_method(method_name)
        model = build_model(task.spec).to(world.device)
        factors = factor_parameters(model)
        if world.is_server:
            assert run_dir is not None, "the server needs a run directory"
            out = method_run_dir(run_dir, config.methods, method_name)
            summaries.append(serve(config, world, task, method, model, factors, out, observer))
        else:
            participate(config, world, task, method, model, factors)
        dist.barrier(group=world.control_group)
    return summaries


def broadcast_vector(vector: torch.Tensor, world: World) -> torch.Tensor:
    """Broadcast a float32 vector from the server over the tensor group (NCCL on GPU)."""
    on_device = vector.to(world.device)
    dist.broadcast(on_device, src=SERVER_RANK, group=world.tensor_group)
    return on_device


def broadcast_session(world: World) -> bytes:
    """The server draws a fresh 16-byte session id per method; every rank learns it."""
    box = [os.urandom(16) if world.is_server else None]
    dist.broadcast_object_list(box, src=SERVER_RANK, group=world.control_group)
    return box[0]


def sync_initial_state(world: World, factors: Mapping[str, Mapping[str, torch.nn.Parameter]]) -> None:
    """Make every rank start from the server's factors (seeded init, but never trusted)."""
    params = all_factor_params(factors)
    names = sorted(params)
    vector = flatten(params, names) if world.is_server else torch.empty(sum(params[n].numel() for n in names))
    vector = broadcast_vector(vector, world)
    if not world.is_server:
        assign_flat(params, names, vector)


def participate(config: RunConfig, world: World, task: Task, method: Method, model, factors) -> None:
    """A client rank: train locally each round and send the masked update."""
    session = broadcast_session(world)
    sync_initial_state(world, factors)
    client_id = world.rank
    shards = partition(
        task.data.train.labels.numpy(),
        world.num_clients,
        scheme=config.partition,
        alpha=config.dirichlet_alpha,
        seed=config.seed,
    )
    shard = subset(task.data.train, shards[client_id - 1])
    client = LocalClient(
        client_id=client_id,
        model=model,
        factors=factors,
        method=method,
        inputs=model_inputs(task, shard, config),
        labels=shard.labels,
        dp=DPSettings(config.batch_size, config.noise_multiplier, config.max_grad_norm),
        optim=OptimSettings(config.optimizer, config.lr, config.head_lr, config.b_lr_ratio, config.smoothing),
        device=world.device,
    )
    dim = sum(client.params[n].numel() for n in client.sent_names)
    secagg = SecureSumConfig(clip_range=config.secagg_clip_range)
    rounding = secret_generator(torch.device("cpu"))  # stochastic rounding in the fixed-point encoding
    for round_idx in range(1, config.rounds + 1):
        global_vector = broadcast_vector(torch.empty(dim), world)
        update, report = client.train_round(global_vector, config.local_steps)
        client_secure_sum(
            update.cpu(),
            client_id=client_id,
            round_idx=round_idx,
            session=session,
            num_clients=world.num_clients,
            config=secagg,
            generator=rounding,
            group=world.control_group,
        )
        dist.gather_object(report, None, dst=SERVER_RANK, group=world.control_group)


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


class EpsilonCache:
    """PRV ε per distinct mechanism history: identical clients cost one composition."""

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self._cache: dict[tuple[PoissonSubsampledGaussian, ...], EpsilonBound] = {}

    def bound(self, mechanisms: Sequence[PoissonSubsampledGaussian]) -> EpsilonBound:
        key = tuple(mechanisms)
        if key not in self._cache:
            self._cache[key] = prv_epsilon(mechanisms, self.delta)
        return self._cache[key]


def serve(config: RunConfig, world: World, task: Task, method: Method, model, factors, out: Path, observer: Observer) -> MethodSummary:
    """The server rank: broadcast, securely sum, update, account, evaluate, record."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / LEDGER_FILE)
    metrics_path = out / METRICS_FILE
    session = broadcast_session(world)
    sync_initial_state(world, factors)
    params = all_factor_params(factors)
    names = method.sent_names(factors)
    secagg = SecureSumConfig(clip_range=config.secagg_clip_range)
    test_inputs = model_inputs(task, task.data.test, config)
    test_labels = task.data.test.labels
    initial_accuracy, loss = evaluate(model, test_inputs, test_labels, device=world.device)
    accuracy = initial_accuracy
    records: list[LedgerRecord] = []
    epsilons = EpsilonCache(config.delta)
    worst = EpsilonBound(0.0, 0.0, 0.0, config.delta, METHOD_NONE)  # nothing released yet
    observer.method_started(method.name, config.rounds)
    for round_idx in range(1, config.rounds + 1):
        round_start = time.perf_counter()
        broadcast_vector(flatten(params, names), world)
        total = server_secure_sum(
            dim=sum(params[n].numel() for n in names),
            round_idx=round_idx,
            session=session,
            num_clients=world.num_clients,
            config=secagg,
            group=world.control_group,
        )
        reports: list[RoundReport | None] = [None] * world.world_size
        dist.gather_object(None, reports, dst=SERVER_RANK, group=world.control_group)
        add_flat(params, names, total / world.num_clients)
        new_records = [
            LedgerRecord(
                round=round_idx,
                client=r.client,
                mechanism=PoissonSubsampledGaussian(r.noise_multiplier, r.sample_rate, r.steps),
                delta=config.delta,
            )
            for r in reports[1:]
        ]
        ledger.append(new_records)
        records.extend(new_records)
        histories = client_mechanisms(records)
        worst = max((epsilons.bound(h) for h in histories.values()), key=lambda b: b.upper)
        evaluated = round_idx % config.eval_every == 0 or round_idx == config.rounds
        if evaluated:
            accuracy, loss = evaluate(model, test_inputs, test_labels, device=world.device)
        row = RoundMetrics(
            method=method.name,
            round=round_idx,
            accuracy=accuracy if evaluated else None,
            loss=loss if evaluated else None,
            epsilon=worst.upper,
            delta=config.delta,
            clients=len(new_records),
            seconds=time.perf_counter() - round_start,
        )
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(row.to_dict()) + "\n")
        save_adapter(model, out / ADAPTER_DIR)
        observer.round_finished(row)
    summary = MethodSummary(
        method=method.name,
        rounds=config.rounds,
        initial_accuracy=initial_accuracy,
        accuracy=accuracy,
        loss=loss,
        epsilon=worst.upper,
        epsilon_method=worst.method,
        delta=config.delta,
        run_dir=str(out),
        seconds=time.perf_counter() - started,
    )
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2))
    observer.method_finished(summary)
    return summary
