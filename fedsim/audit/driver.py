"""``fedsim audit``: one training run with canaries, the ε it proves, beside the ε the accountant claims.

The one-run audit of Steinke, Nasr & Jagielski (NeurIPS 2023) on fedsim's real pipeline,
in one process: the task, model and trainer are built as a client process builds them
(:func:`fedsim.task.load_task`, :func:`fedsim.task.fresh_model`,
:func:`fedsim.client.loop.hosted_shards`, :class:`fedsim.client.trainer.LocalTrainer`);
client 1 is audited. Its canaries (:mod:`fedsim.audit.canaries`) go through the real
Poisson sampling, clipping, noise, smoothing and factor alternation; an observer
(:mod:`fedsim.audit.observers`) scores them; :mod:`fedsim.audit.bound` turns the scores
into guesses and an ε lower bound at 95% confidence.

The federation: under the ``step`` and ``client-update`` observers only the audited client
trains (a cohort of one: the global model moves by its update); under ``aggregate`` the
planned cohort (clients 1..cohort, every round) trains from the same global state and the
observer sees the sum of their updates — what secure aggregation reveals to the server
(the protocol's fixed-point encoding of that sum is post-processing and is not re-run).

The accountant's figure is the audited client's sample-level ε: the PRV upper bound of
``rounds × local_steps`` Poisson-subsampled Gaussian steps at the claimed σ and the client's
q (:func:`accounting.prv_epsilon`). The control run repeats the audit with σ = 0 in the
mechanism: what the canaries can prove when nothing protects them (the audit's power).
``mechanism_noise_scale`` (tests only) runs the mechanism at σ·scale while the accountant is
still told σ — a deliberately broken implementation the audit must catch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from accounting import EpsilonBound, PoissonSubsampledGaussian, prv_epsilon
from fedsim.audit.bound import AuditBound, audit_bound
from fedsim.audit.canaries import Canaries, CanaryInjector, draw_canaries
from fedsim.audit.errors import AuditError
from fedsim.audit.observers import (
    AGGREGATE,
    CLIENT_UPDATE,
    OBSERVERS,
    STEP,
    StepObserver,
    UpdateObserver,
)
from fedsim.client.trainer import ClientShard, LocalTrainer
from fedsim.config import RunConfig
from fedsim.dp.randomness import SecretRandom, secret_random
from fedsim.methods.registry import REPLACE, factor_learning_rates, phase_steps
from fedsim.population import Population, cohort_sampling
from fedsim.task import Task, load_task
from fedsim.transport.vectors import flatten

__all__ = ["AuditReport", "AuditRun", "Federation", "accountant_epsilon", "add_mean", "audit", "audit_federation", "build_federation"]

logger = logging.getLogger(__name__)


@dataclass
class Federation:
    """What one audit trains: one trainer (one model, as a client process holds) and the
    cohort's shards, ``shards[0]`` the audited client."""

    trainer: LocalTrainer
    shards: Sequence[ClientShard]


@dataclass(frozen=True)
class AuditRun:
    """One audited training run: the mechanism's σ, the bound, and the per-canary evidence."""

    noise_multiplier: float
    bound: AuditBound
    scores: np.ndarray
    members: np.ndarray
    entered: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, **self.bound.to_dict(), "members": int(self.members.sum())}


@dataclass(frozen=True)
class AuditReport:
    """``fedsim audit``'s result: the audited run at the claimed σ, its accountant's ε, the control."""

    method: str
    observer: str
    noise_multiplier: float
    mechanism_noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: EpsilonBound
    audited: AuditRun
    control: AuditRun | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``fedsim audit --json``: ``empirical_epsilon_lower`` and ``epsilon`` (the
        accountant's PRV upper bound) of the audited client, the guesses, and ``control``."""
        out = {
            "empirical_epsilon_lower": self.audited.bound.epsilon,
            "epsilon": self.epsilon.upper,
            "accountant": self.epsilon.to_dict(),
            "method": self.method,
            "observer": self.observer,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            **{k: v for k, v in self.audited.to_dict().items() if k not in ("empirical_epsilon_lower", "noise_multiplier")},
            "control": None if self.control is None else self.control.to_dict(),
        }
        if self.mechanism_noise_multiplier != self.noise_multiplier:
            out["mechanism_noise_multiplier"] = self.mechanism_noise_multiplier
        return out


def accountant_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> EpsilonBound:
    """The audited client's sample-level ε: ``steps`` Poisson-subsampled Gaussian steps (PRV, Gopi et al. 2021)."""
    return prv_epsilon([PoissonSubsampledGaussian(noise_multiplier, sample_rate, steps)], delta)


def build_federation(config: RunConfig, task: Task, *, noise_multiplier: float, cohort: int, device: torch.device) -> Federation:
    """The trainer of ``config``'s (single) method with σ = ``noise_multiplier`` in the mechanism,
    and the shards of clients 1..``cohort`` of the run's seeded partition."""
    from fedsim.client.loop import (  # the client process's secure-sum stack: only for a real task
        build_trainer,
        hosted_shards,
    )

    if len(config.methods) != 1:
        raise AuditError("methods", ",".join(config.methods), "exactly one method to audit")
    if config.local_epochs is not None:
        raise AuditError("local_epochs", config.local_epochs, "unset: the audit runs --local-steps K per round")
    if config.smoothing_mode != REPLACE:
        raise AuditError("smoothing_mode", config.smoothing_mode, f"{REPLACE!r}: the observers undo that smoothing only")
    trainer = build_trainer(config, task, config.methods[0], device, noise_multiplier=noise_multiplier)
    population = Population(config.population_size, config.num_clients)
    shards = hosted_shards(config, task, population, range(1, cohort + 1))
    return Federation(trainer, [shards[cid] for cid in range(1, cohort + 1)])


def add_mean(global_vector: torch.Tensor, layout: Mapping[str, slice], sent: Sequence[str], mean: torch.Tensor) -> torch.Tensor:
    """The server's step: the sent parameters of the global state move by the cohort's mean update."""
    out = global_vector.clone()
    offset = 0
    for name in sent:
        where = layout[name]
        size = where.stop - where.start
        out[where] += mean[offset:offset + size].to(out.device)
        offset += size
    return out


def audit_federation(
    federation: Federation,
    *,
    rounds: int,
    local_steps: int,
    canaries: int,
    observer: str,
    delta: float,
    confidence: float = 0.95,
    rng: SecretRandom | None = None,
) -> AuditRun:
    """Train ``federation`` for ``rounds`` with ``canaries`` in its first client; score, guess, bound.

    The canary norm is the trainer's clipping norm C; canaries enter each step at the audited
    shard's record rate q. ``rng`` (default: a fresh OS-keyed one) draws the coordinates, the
    membership and the per-step sampling of the canaries.
    """
    if observer not in OBSERVERS:
        raise AuditError("observer", observer, f"one of {OBSERVERS}")
    rng = secret_random() if rng is None else rng
    trainer, shards = federation.trainer, list(federation.shards)
    method, factors = trainer.method, trainer.factors
    names = method.all_sent_names(factors)
    shapes = {name: trainer.params[name].shape for name in names}
    sizes = {name: trainer.params[name].numel() for name in names}
    starts = np.cumsum([0] + [sizes[n] for n in names])
    layout = {name: slice(int(starts[i]), int(starts[i + 1])) for i, name in enumerate(names)}
    factor_of = {name: factor for factor, named in factors.items() for name in named if name in sizes}
    smoothing = trainer.optim.smoothing if method.smoothing else 0.0

    marked: Canaries = draw_canaries(sizes, canaries, trainer.dp.max_grad_norm, rng)
    injector = CanaryInjector(marked, trainer.params, shards[0].sample_rate, rng)
    if observer == STEP:
        scorer: StepObserver | UpdateObserver = StepObserver(marked, trainer.params, factor_of, smoothing)
    else:
        rates = factor_learning_rates(method, trainer.optim.lr, trainer.optim.head_lr, trainer.optim.b_lr_ratio)
        scorer = UpdateObserver(marked, factor_of, smoothing, rates, linear=trainer.optim.optimizer == "sgd")
    cohort = shards if observer == AGGREGATE else shards[:1]

    global_vector = flatten(trainer.params, names).detach().clone()
    for round_idx in range(1, rounds + 1):
        phases = method.phases(round_idx)
        for phase, steps in zip(phases, phase_steps(local_steps, len(phases))):
            sent = phase.sent_names(factors)
            total = None
            for position, shard in enumerate(cohort):
                audited = position == 0
                update, _ = trainer.train_phase(
                    shard, global_vector, phase, steps,
                    after_step=scorer if audited and observer == STEP else None,
                    before_step=injector if audited else None,
                    round_idx=round_idx,
                )
                if audited and observer == CLIENT_UPDATE:
                    scorer.observe(update, sent, shapes)
                total = update if total is None else total + update
            if observer == AGGREGATE:
                scorer.observe(total, sent, shapes)
            global_vector = add_mean(global_vector, layout, sent, total / len(cohort))
        logger.debug("audit round %d/%d done", round_idx, rounds)
    bound = audit_bound(scorer.scores, marked.members, delta, confidence=confidence, rng=rng.numpy)
    return AuditRun(trainer.dp.noise_multiplier, bound, scorer.scores, marked.members, injector.entered)


def audit(
    config: RunConfig,
    *,
    canaries: int = 1000,
    observer: str = STEP,
    confidence: float = 0.95,
    control: bool = True,
    device: torch.device | None = None,
    mechanism_noise_scale: float = 1.0,
) -> AuditReport:
    """Audit ``config``'s method on client 1: the run at the claimed σ and (``control``) at σ = 0.

    ``mechanism_noise_scale`` is a test-only hook: the mechanism runs at σ·scale, the
    accountant is told σ (``config.noise_multiplier``).
    """
    if observer not in OBSERVERS:
        raise AuditError("observer", observer, f"one of {OBSERVERS}")
    if len(config.methods) != 1:
        raise AuditError("methods", ",".join(config.methods), "exactly one method to audit")
    if not 0.0 <= mechanism_noise_scale <= 1.0:
        raise AuditError("mechanism_noise_scale", mechanism_noise_scale, "a number in [0, 1]")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device is None else device
    task = load_task(config)
    cohort = cohort_sampling(config).expected_size(config.population_size) if observer == AGGREGATE else 1
    sigma = config.noise_multiplier
    runs = {}
    for label, mechanism_sigma in (("audited", sigma * mechanism_noise_scale), ("control", 0.0)):
        if label == "control" and not control:
            continue
        federation = build_federation(config, task, noise_multiplier=mechanism_sigma, cohort=cohort, device=device)
        runs[label] = audit_federation(
            federation, rounds=config.rounds, local_steps=config.local_steps, canaries=canaries,
            observer=observer, delta=config.delta, confidence=confidence,
        )
        sample_rate = federation.shards[0].sample_rate
        logger.info("audit %s (σ=%g): ε ≥ %.3f", label, mechanism_sigma, runs[label].bound.epsilon)
    steps = config.rounds * config.local_steps
    return AuditReport(
        method=config.methods[0],
        observer=observer,
        noise_multiplier=sigma,
        mechanism_noise_multiplier=sigma * mechanism_noise_scale,
        sample_rate=sample_rate,
        steps=steps,
        epsilon=accountant_epsilon(sigma, sample_rate, steps, config.delta),
        audited=runs["audited"],
        control=runs.get("control"),
    )
