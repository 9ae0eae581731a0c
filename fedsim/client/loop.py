"""A client process (ranks 1..W-1): answer the server for every virtual client it hosts.

Per method: receive SETUP (the session id and the initial state), then per phase of every
round a ROUND frame (the global state and which hosted clients train), and take part in
that phase's secure sum (:func:`fedsim.secure_sum.exchange.client_secure_sum`). When the
protocol asks for a client's masked input (MaskedInputCollection) the process trains that
client (:class:`~fedsim.client.trainer.LocalTrainer`), sends one REPORT for all of them
(the mechanisms they ran) and only then the masked updates (with client-level DP each
clipped, rounded and noised by the Skellam code first: :class:`~fedsim.secure_sum.exchange.SumCode`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedsim.client.trainer import ClientShard, LocalTrainer, dp_settings, optim_settings
from fedsim.config import RunConfig
from fedsim.data.loaders import subset
from fedsim.dp.randomness import secret_random
from fedsim.methods.registry import Phase, phase_steps
from fedsim.models.build import build_tokenizer
from fedsim.models.lora_params import parameters_by_name
from fedsim.population import Population
from fedsim.secure_sum.config import dropout_plan, secure_sum_config
from fedsim.secure_sum.exchange import client_secure_sum, round_and_phase
from fedsim.secure_sum.identity import ClientPKI, client_pki
from fedsim.task import (
    Task,
    client_partition,
    client_round_steps,
    fresh_model,
    stored_inputs,
)
from fedsim.transport.framing import Frame, FrameError, unpack_ids
from fedsim.transport.payloads import pack_report, unpack_vector
from fedsim.transport.relay import ClientRelay, Evicted
from fedsim.transport.vectors import assign_flat, flat_size
from fedsim.transport.vocabulary import Kind, RoundEntry, SetupEntry
from fedsim.transport.world import SERVER_RANK, World
from secagg.params import SESSION_BYTES
from secagg.threat_models import ACTIVE

__all__ = ["build_trainer", "hosted_shards", "participate_run"]

logger = logging.getLogger(__name__)


def participate_run(config: RunConfig, world: World, task: Task) -> None:
    """A client rank: one method after another, until the server says FINISH.

    If the server drops this process it leaves quietly (the server logged why); any
    other failure is sent to the server (FAIL) before it propagates.
    """
    relay = ClientRelay(world.store, SERVER_RANK, timeout_s=2 * config.timeout_s, rank=world.rank)
    try:
        pki = None
        if config.secagg_threat_model == ACTIVE:  # identities for the run, published before the first round
            hosted = Population(config.population_size, world.num_clients).hosted_by(world.rank)
            pki = client_pki(world.store, hosted, range(1, config.population_size + 1), config.timeout_s)
        for method_name in config.methods:
            HostedClients(config, world, task, relay, method_name, pki).participate()
        relay.receive(Kind.FINISH)
    except Evicted as exc:
        logger.warning("rank %d leaves: %s", world.rank, exc)
        relay.close()
        return
    except BaseException as exc:
        relay.close(failure=f"{type(exc).__name__}: {exc}")
        raise
    relay.close()


def hosted_shards(config: RunConfig, task: Task, population: Population, hosted: Sequence[int]) -> dict[int, ClientShard]:
    """The records of the clients this process hosts: the population's seeded partition.

    Only the hosted clients' records are encoded (texts tokenized once; images kept at their
    stored size and resized per batch: :func:`fedsim.task.stored_inputs`).
    """
    train = task.data.train
    if population.size != config.population_size:
        raise ValueError(f"population={population.size} is invalid: expected the config's population_size={config.population_size}")
    indices = client_partition(config, task)
    tokenizer = build_tokenizer(task.spec) if task.data.modality == "text" else None
    shards = {}
    for cid in hosted:
        records = subset(train, indices[cid - 1])
        inputs, prepare = stored_inputs(task, records, tokenizer)
        shards[cid] = ClientShard.build(cid, inputs, records.labels, config.batch_size, prepare)
    return shards


def build_trainer(
    config: RunConfig, task: Task, method_name: str, device: torch.device, noise_multiplier: float | None = None,
) -> LocalTrainer:
    """A fresh model of ``method_name`` and its trainer, as a client process builds it (σ overridable: the audit)."""
    method, model, factors = fresh_model(task, method_name, device)
    return LocalTrainer(
        model=model, factors=factors, method=method,
        dp=dp_settings(config, noise_multiplier), optim=optim_settings(config), device=device,
    )


@dataclass
class PhaseTraining:
    """The input of one phase's secure sum: train the clients the protocol asks for, REPORT, hand back updates."""

    relay: ClientRelay
    trainer: LocalTrainer
    shards: Mapping[int, ClientShard]
    phase: Phase
    steps: Mapping[int, int]  # this phase's steps of each hosted client
    global_vector: torch.Tensor
    exchange: int
    round_idx: int = 1

    def __call__(self, client_ids: list[int]) -> dict[int, torch.Tensor]:
        updates, reports = {}, {}
        for cid in client_ids:
            if cid not in self.shards:
                raise FrameError(f"the server asked for the input of client {cid}, not hosted here")
            update, report = self.trainer.train_phase(
                self.shards[cid], self.global_vector, self.phase, self.steps[cid], round_idx=self.round_idx,
            )
            updates[cid] = update.cpu()
            reports[cid] = pack_report(report)
        self.relay.send(Frame(Kind.REPORT, self.exchange, entries=reports))
        return updates


class HostedClients:
    """One method at one client process: the trainer, the hosted shards, the secure sums."""

    def __init__(
        self, config: RunConfig, world: World, task: Task, relay: ClientRelay, method_name: str, pki: ClientPKI | None = None,
    ) -> None:
        self.config, self.relay, self.device, self.pki = config, relay, world.device, pki
        self.trainer = build_trainer(config, task, method_name, world.device)
        self.method, self.factors = self.trainer.method, self.trainer.factors
        self.params = parameters_by_name(self.factors)
        self.dim_all = flat_size(self.params, self.method.all_sent_names(self.factors))  # the ROUND frame's global state
        population = Population(config.population_size, world.num_clients)
        self.shards = hosted_shards(config, task, population, population.hosted_by(world.rank))
        phases = len(self.method.phases(1))
        self.round_steps = {cid: client_round_steps(config, shard.num_records, phases) for cid, shard in self.shards.items()}
        self.secagg = secure_sum_config(config)
        self.dropouts = dropout_plan(config)
        self.rounding = secret_random()  # rounding coins (and Skellam noise) of the encoding

    def participate(self) -> None:
        """SETUP, then every phase of every round the server starts, until DONE."""
        setup = self.relay.receive(Kind.SETUP)
        session = bytes(setup.entries.get(SetupEntry.SESSION, b""))
        if len(session) != SESSION_BYTES:
            raise FrameError(f"SETUP carries a {len(session)}-byte session id, expected {SESSION_BYTES}")
        every = sorted(self.params)
        initial = unpack_vector(setup.entries.get(SetupEntry.INITIAL_STATE, b""), flat_size(self.params, every), "initial state")
        assign_flat(self.params, every, initial)
        phases = len(self.method.phases(1))
        while (frame := self.relay.receive(Kind.ROUND, Kind.DONE)).kind == Kind.ROUND:
            self.run_phase(frame, session, phases)

    def run_phase(self, frame: Frame, session: bytes, phases: int) -> None:
        """One phase: train the hosted clients asked for (when the protocol asks), then the secure sum."""
        round_idx, phase_idx = round_and_phase(frame.round, phases)
        phase = self.method.phases(round_idx)[phase_idx]
        global_vector = unpack_vector(frame.entries.get(RoundEntry.GLOBAL_STATE, b""), self.dim_all, f"round {round_idx} global state")
        training = PhaseTraining(
            self.relay, self.trainer, self.shards, phase,
            steps={cid: phase_steps(steps, phases)[phase_idx] for cid, steps in self.round_steps.items()},
            global_vector=global_vector.to(self.device),
            exchange=frame.round,
            round_idx=round_idx,
        )
        client_secure_sum(
            self.relay, unpack_ids(frame.entries.get(RoundEntry.CLIENTS, b""), "clients to train"), training,
            session=session, round_idx=frame.round,
            dim=flat_size(self.params, phase.sent_names(self.factors)),
            config=self.secagg, rounding=self.rounding, dropouts=self.dropouts,
            identities=self.pki.identities if self.pki else None, verify_keys=self.pki.verify_keys if self.pki else None,
        )
