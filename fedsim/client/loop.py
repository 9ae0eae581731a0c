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

from fedsim.client.trainer import ClientShard, DPSettings, LocalTrainer, OptimSettings
from fedsim.config import RunConfig
from fedsim.data.partition import partition
from fedsim.dp.randomness import secret_random
from fedsim.methods.registry import Phase, phase_steps
from fedsim.models.lora_params import parameters_by_name
from fedsim.population import Population
from fedsim.secure_sum.config import dropout_plan, secure_sum_config
from fedsim.secure_sum.identity import ClientPKI, client_pki
from fedsim.secure_sum.exchange import client_secure_sum, round_and_phase
from fedsim.task import Task, fresh_model, model_inputs
from fedsim.transport.framing import Frame, FrameError, unpack_ids
from fedsim.transport.payloads import pack_report, unpack_vector
from fedsim.transport.relay import ClientRelay, Evicted
from fedsim.transport.vectors import assign_flat, flat_size
from fedsim.transport.vocabulary import Kind, RoundEntry, SetupEntry
from fedsim.transport.world import SERVER_RANK, World
from secagg.params import SESSION_BYTES
from secagg.threat_models import ACTIVE

__all__ = ["hosted_shards", "participate_run"]

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
    """The records of the clients this process hosts: the population's seeded partition, tokenized once."""
    labels = task.data.train.labels
    indices = partition(labels.numpy(), population.size, scheme=config.partition, alpha=config.dirichlet_alpha, seed=config.seed)
    inputs = model_inputs(task, task.data.train)
    return {
        cid: ClientShard.build(cid, tuple(x[indices[cid - 1]] for x in inputs), labels[indices[cid - 1]], config.batch_size)
        for cid in hosted
    }


@dataclass
class PhaseTraining:
    """The input of one phase's secure sum: train the clients the protocol asks for, REPORT, hand back updates."""

    relay: ClientRelay
    trainer: LocalTrainer
    shards: Mapping[int, ClientShard]
    phase: Phase
    steps: int
    global_vector: torch.Tensor
    exchange: int

    def __call__(self, client_ids: list[int]) -> dict[int, torch.Tensor]:
        updates, reports = {}, {}
        for cid in client_ids:
            if cid not in self.shards:
                raise FrameError(f"the server asked for the input of client {cid}, not hosted here")
            update, report = self.trainer.train_phase(self.shards[cid], self.global_vector, self.phase, self.steps)
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
        self.method, model, self.factors = fresh_model(task, method_name, world.device)
        self.params = parameters_by_name(self.factors)
        self.dim_all = flat_size(self.params, self.method.all_sent_names(self.factors))  # the ROUND frame's global state
        self.trainer = LocalTrainer(
            model=model,
            factors=self.factors,
            method=self.method,
            dp=DPSettings(config.batch_size, config.noise_multiplier, config.max_grad_norm),
            optim=OptimSettings(config.optimizer, config.lr, config.head_lr, config.b_lr_ratio, config.smoothing),
            device=world.device,
        )
        population = Population(config.population_size, world.num_clients)
        self.shards = hosted_shards(config, task, population, population.hosted_by(world.rank))
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
            steps=phase_steps(self.config.local_steps, phases)[phase_idx],
            global_vector=global_vector.to(self.device),
            exchange=frame.round,
        )
        client_secure_sum(
            self.relay, unpack_ids(frame.entries.get(RoundEntry.CLIENTS, b""), "clients to train"), training,
            session=session, round_idx=frame.round,
            dim=flat_size(self.params, phase.sent_names(self.factors)),
            config=self.secagg, rounding=self.rounding, dropouts=self.dropouts,
            identities=self.pki.identities if self.pki else None, verify_keys=self.pki.verify_keys if self.pki else None,
        )
