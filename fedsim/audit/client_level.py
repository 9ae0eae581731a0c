"""``fedsim audit --level client``: a one-run audit of the distributed Skellam mechanism with canary clients.

Steinke, Nasr & Jagielski (NeurIPS 2023), "Privacy Auditing with One (1) Training Run", at
the client level: m canary *clients* join the cohort of every round beside ``real_clients``
ordinary ones, and each canary is a member (secret coin, probability ½, from
:class:`~fedsim.dp.randomness.SecretRandom`, one coin for the whole run). A member's update
is S·e_j (the client clip S on one coordinate j of the update vector, a distinct j per
canary); a non-member still takes part with a zero update. That is the adjacency the
client-level accountant covers: zero-out, one client's update replaced by zero while it
still adds its noise share (its rounded input is then exactly 0), so both worlds have the
same cohort, the same planned noise and the same participants on the ledger.

Every cohort member's update goes through the real code path of a client under
client-level DP (:meth:`fedsim.dp.skellam.SkellamCodec.encode`: clipping to S, scaling by
γ, the randomized Hadamard rotation under the round's public seed
(:func:`fedsim.dp.skellam.rotation_seed` of a fresh session id and the round index, as
:func:`fedsim.secure_sum.exchange.sum_code` derives it), conditional randomized rounding
and its own Skellam share Sk(μ/n), coins from the CSPRNG). The ring inputs are summed mod
2^b (:func:`ring_sum`): the pairwise and self masks of secure aggregation cancel, so this
is the server's result exactly (a test runs :func:`secagg.protocol.run_in_memory` on the
same inputs to show it). The server decodes with
:meth:`~fedsim.dp.skellam.SkellamCodec.decode_sum`; the auditor is the server, and canary
i's score is Σ over rounds of the decoded sum at j_i. :func:`fedsim.audit.bound.audit_bound`
turns the scores into guesses and an ε lower bound.

The other cohort members ("real" clients 1..``real_clients``) send a fresh random
direction of norm exactly S each round (clipped updates at the clip, the worst case for the
ring); they are the rest of the cohort, not audited.

The accountant's ε is the one a run reports for a canary client against the server: the
ledger records of the run (:func:`fedsim.server.records.client_level_record`, one
:class:`~accounting.DistributedSkellam` per secure sum with the realized μ, Δ1, Δ2 and the
cohort as participants) composed by :func:`accounting.budget_snapshot` (Skellam RDP,
Agarwal, Kairouz & Liu, NeurIPS 2021; no cohort amplification against the server, who
picks the cohort). The control repeats the audit at z = 0 (μ = 0: no noise), the audit's
power. ``mechanism_noise_scale`` (tests only) runs the mechanism at z·scale while the
records carry the claimed z's parameters: a broken implementation the audit must catch.

One secure sum per round, of the audited method's first phase update (its dimension from
the real model, :func:`sent_dimension`, as :func:`fedsim.preflight.check_client_level_noise`
computes it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from accounting import AGAINST_SERVER, ClientLevelBudget, LedgerRecord, budget_snapshot
from fedsim.audit.bound import AuditBound, audit_bound
from fedsim.audit.errors import AuditError
from fedsim.config import RunConfig
from fedsim.dp.randomness import SecretRandom, secret_random, session_id
from fedsim.dp.skellam import SkellamCodec, SkellamParams, rotation_seed, skellam_params
from secagg.encoding import ring_dtype

__all__ = [
    "CanaryClients",
    "ClientLevelReport",
    "ClientLevelRun",
    "accountant_budget",
    "audit_client_level",
    "audit_config",
    "audit_records",
    "draw_canary_clients",
    "real_update",
    "ring_sum",
    "round_inputs",
    "run_canary_clients",
    "sent_dimension",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryClients:
    """Canary clients ``ids``: canary i would send ``clip`` · e_{coordinates[i]}; ``members[i]``
    (secret) says whether it does, else it sends zeros."""

    ids: tuple[int, ...]
    coordinates: np.ndarray
    members: np.ndarray
    clip: float

    @property
    def count(self) -> int:
        return len(self.ids)

    def update(self, index: int, dim: int) -> torch.Tensor:
        """Canary ``index``'s update: S·e_j for a member, zeros (zero-out adjacency) for a non-member."""
        update = torch.zeros(dim, dtype=torch.float32)
        if self.members[index]:
            update[int(self.coordinates[index])] = self.clip
        return update


def draw_canary_clients(dim: int, count: int, clip: float, rng: SecretRandom, *, first_id: int = 1) -> CanaryClients:
    """``count`` canary clients (ids ``first_id``, ``first_id`` + 1, ...) on distinct coordinates of a
    ``dim``-value update, each a member w.p. ½ (coins from ``rng``)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= dim:
        raise AuditError("canaries", count, f"an integer in [2, {dim}] (one distinct coordinate of the {dim}-value update each)")
    if not (math.isfinite(clip) and clip > 0):
        raise AuditError("client_clip", clip, "a finite number > 0")
    if isinstance(first_id, bool) or not isinstance(first_id, int) or first_id < 1:
        raise ValueError(f"first_id={first_id!r} is invalid: expected an integer >= 1")
    coordinates = np.asarray(rng.sample_without_replacement(dim, count), dtype=np.int64)
    members = rng.bernoulli_mask(count, 0.5).numpy().astype(bool)
    return CanaryClients(tuple(range(first_id, first_id + count)), coordinates, members, float(clip))


def real_update(dim: int, clip: float, rng: np.random.Generator) -> torch.Tensor:
    """A non-canary cohort member's update: a uniformly random direction of norm exactly ``clip``."""
    direction = rng.standard_normal(dim)
    direction *= clip / float(np.linalg.norm(direction))
    return torch.from_numpy(direction.astype(np.float32))


def round_inputs(
    codec: SkellamCodec, seed: bytes, canaries: CanaryClients, real_ids: Sequence[int], rng: SecretRandom
) -> dict[int, np.ndarray]:
    """Every cohort member's ring input of one secure sum (client id → :meth:`SkellamCodec.encode`),
    real clients first; each with its own rounding coins and noise share from ``rng``."""
    dim = codec.params.dim
    inputs = {cid: codec.encode(real_update(dim, canaries.clip, rng.numpy), seed, rng.numpy) for cid in real_ids}
    for index, cid in enumerate(canaries.ids):
        inputs[cid] = codec.encode(canaries.update(index, dim), seed, rng.numpy)
    return inputs


def ring_sum(inputs: Sequence[np.ndarray], modulus_bits: int) -> np.ndarray:
    """Σ inputs mod 2^``modulus_bits`` (unsigned wrap-around): what secure aggregation's server
    obtains once the masks cancel (:func:`secagg.encoding.wrapping_sum` on ring arrays)."""
    if not inputs:
        raise ValueError("inputs must hold at least one ring array, got 0")
    dtype = ring_dtype(modulus_bits)
    total = np.zeros(inputs[0].shape, dtype=dtype)
    for index, ring in enumerate(inputs):
        if ring.dtype != dtype or ring.shape != total.shape:
            raise ValueError(f"inputs[{index}] must be {dtype} of shape {total.shape}, got {ring.dtype} of shape {ring.shape}")
        np.add(total, ring, out=total)
    return total


def audit_records(params: SkellamParams, rounds: int, participants: Sequence[int], delta: float) -> list[LedgerRecord]:
    """The ledger records a run writes for ``rounds`` secure sums of a fixed cohort ``participants``
    (all surviving) under ``params`` (:func:`fedsim.server.records.client_level_record`)."""
    from fedsim.population import CohortSampling
    from fedsim.server.records import client_level_record

    cohort = sorted(participants)
    sampling = CohortSampling("fixed", size=len(cohort))
    return [
        client_level_record(round_idx, params=params, sampling=sampling, population=len(cohort), survivors=cohort, delta=delta)
        for round_idx in range(1, rounds + 1)
    ]


def accountant_budget(records: Sequence[LedgerRecord], delta: float, client: int) -> ClientLevelBudget:
    """Client ``client``'s client-level budget against the server, from ``records`` alone
    (:func:`accounting.budget_snapshot`, as ``fedsim budget show`` computes it)."""
    budgets = budget_snapshot(records, delta).client_level_budgets(AGAINST_SERVER)
    if client not in budgets:
        raise ValueError(f"client={client!r} is in no secure sum of the records")
    return budgets[client]


@dataclass(frozen=True)
class ClientLevelRun:
    """One audited run of the Skellam path: the mechanism's z and parameters, the bound, the evidence.

    ``out_of_range``: coordinates of the rounds' ring sums beyond the honest bound (0 unless a
    wrap-probability event happened)."""

    noise_multiplier: float
    params: SkellamParams
    bound: AuditBound
    scores: np.ndarray
    members: np.ndarray
    out_of_range: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            **self.bound.to_dict(),
            "members": int(self.members.sum()),
            "gamma": self.params.gamma,
            "mu": self.params.mu,
            "out_of_range": self.out_of_range,
        }


def _check_count(name: str, value: int, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise AuditError(name, value, f"an integer >= {lo}")


def run_canary_clients(
    *,
    dim: int,
    clip: float,
    noise_multiplier: float,
    rounds: int,
    canaries: int,
    real_clients: int,
    delta: float,
    modulus_bits: int = 32,
    confidence: float = 0.95,
    rng: SecretRandom | None = None,
) -> ClientLevelRun:
    """``rounds`` secure sums of a cohort of ``real_clients`` + ``canaries`` clients under the
    Skellam mechanism at z = ``noise_multiplier``; score, guess, bound.

    ``rng`` (default: a fresh OS-keyed one) draws the canaries' coordinates and membership, the
    real clients' updates, and every member's rounding coins and noise share.
    """
    _check_count("rounds", rounds, 1)
    _check_count("real_clients", real_clients, 0)
    rng = secret_random() if rng is None else rng
    marked = draw_canary_clients(dim, canaries, clip, rng, first_id=real_clients + 1)
    cohort = real_clients + marked.count
    params = skellam_params(dim, clip, noise_multiplier, cohort, modulus_bits)  # as SecureSumConfig.skellam sizes it
    codec = SkellamCodec(params)
    real_ids = range(1, real_clients + 1)
    session = session_id()
    scores = np.zeros(marked.count, dtype=np.float64)
    flagged = 0
    for round_idx in range(1, rounds + 1):
        seed = rotation_seed(session, round_idx)
        inputs = round_inputs(codec, seed, marked, real_ids, rng)
        total = ring_sum(list(inputs.values()), modulus_bits)
        flagged += codec.out_of_range(total, cohort)
        decoded = codec.decode_sum(total, cohort, seed)
        scores += decoded[torch.from_numpy(marked.coordinates)].double().numpy()
        logger.debug("client-level audit round %d/%d done", round_idx, rounds)
    if flagged:
        logger.warning("client-level audit: %d coordinates of the ring sums beyond the honest bound", flagged)
    bound = audit_bound(scores, marked.members, delta, confidence=confidence, rng=rng.numpy)
    return ClientLevelRun(float(noise_multiplier), params, bound, scores, marked.members, flagged)


@dataclass(frozen=True)
class ClientLevelReport:
    """``fedsim audit --level client``'s result: the run at the claimed z, the accountant's ε
    of a canary client against the server, and the control at z = 0."""

    noise_multiplier: float
    mechanism_noise_multiplier: float
    clip: float
    rounds: int
    real_clients: int
    params: SkellamParams
    epsilon: ClientLevelBudget
    audited: ClientLevelRun
    control: ClientLevelRun | None

    @property
    def claimed_epsilon(self) -> float:
        """The accountant's ε the bound is compared with."""
        return self.epsilon.epsilon

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``fedsim audit --level client --json``: ``empirical_epsilon_lower``, ``epsilon``
        (the accountant's, of a canary client against the server), the guesses and ``control``."""
        out = {
            "level": "client",
            "observer": AGAINST_SERVER,
            "empirical_epsilon_lower": self.audited.bound.epsilon,
            "epsilon": self.epsilon.epsilon,
            "accountant": self.epsilon.to_dict(),
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "rounds": self.rounds,
            "dim": self.params.dim,
            "padded_dim": self.params.padded_dim,
            "modulus_bits": self.params.modulus_bits,
            "real_clients": self.real_clients,
            "cohort": self.params.planned,
            "l2_sensitivity": self.params.l2_sensitivity,
            **{k: v for k, v in self.audited.to_dict().items() if k not in ("empirical_epsilon_lower", "noise_multiplier")},
            "control": None if self.control is None else self.control.to_dict(),
        }
        if self.mechanism_noise_multiplier != self.noise_multiplier:
            out["mechanism_noise_multiplier"] = self.mechanism_noise_multiplier
        return out


def audit_client_level(
    *,
    dim: int,
    clip: float,
    noise_multiplier: float,
    rounds: int,
    canaries: int,
    real_clients: int,
    delta: float,
    modulus_bits: int = 32,
    confidence: float = 0.95,
    control: bool = True,
    mechanism_noise_scale: float = 1.0,
) -> ClientLevelReport:
    """Audit the Skellam path at the claimed z = ``noise_multiplier`` (> 0) and (``control``) at z = 0.

    ``mechanism_noise_scale`` is a test-only hook: the mechanism runs at z·scale, the
    accountant's records carry the claimed z's parameters (γ, Δ1, Δ2, μ).
    """
    if not (isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise AuditError("client_noise_multiplier", noise_multiplier, "a number > 0 (the claimed client-level noise z)")
    if not 0.0 <= mechanism_noise_scale <= 1.0:
        raise AuditError("mechanism_noise_scale", mechanism_noise_scale, "a number in [0, 1]")
    settings = {"dim": dim, "clip": clip, "rounds": rounds, "canaries": canaries, "real_clients": real_clients,
                "delta": delta, "modulus_bits": modulus_bits, "confidence": confidence}  # fmt: skip
    runs = {}
    for label, z in (("audited", noise_multiplier * mechanism_noise_scale), ("control", 0.0)):
        if label == "control" and not control:
            continue
        runs[label] = run_canary_clients(noise_multiplier=z, **settings)
        logger.info("client-level audit %s (z=%g): ε ≥ %.3f", label, z, runs[label].bound.epsilon)
    cohort = real_clients + canaries
    claimed = skellam_params(dim, clip, noise_multiplier, cohort, modulus_bits)
    records = audit_records(claimed, rounds, range(1, cohort + 1), delta)
    return ClientLevelReport(
        noise_multiplier=float(noise_multiplier),
        mechanism_noise_multiplier=float(noise_multiplier * mechanism_noise_scale),
        clip=float(clip),
        rounds=rounds,
        real_clients=real_clients,
        params=claimed,
        epsilon=accountant_budget(records, delta, client=real_clients + 1),  # every canary's figure is the same
        audited=runs["audited"],
        control=runs.get("control"),
    )


def sent_dimension(config: RunConfig) -> int:
    """The length of the update the audited method (``config.methods``, exactly one) sends in its
    first phase, from the real model (as :func:`fedsim.preflight.check_client_level_noise`)."""
    from fedsim.models.lora_params import parameters_by_name
    from fedsim.task import fresh_model, load_task
    from fedsim.transport.vectors import flat_size

    if len(config.methods) != 1:
        raise AuditError("methods", ",".join(config.methods), "exactly one method to audit")
    method, _, factors = fresh_model(load_task(config), config.methods[0], torch.device("cpu"))
    return flat_size(parameters_by_name(factors), method.phases(1)[0].sent_names(factors))


def audit_config(config: RunConfig, *, canaries: int = 1000, confidence: float = 0.95, control: bool = True) -> ClientLevelReport:
    """Audit ``config``'s client-level DP (``client_noise_multiplier``, ``client_clip``,
    ``secagg_modulus_bits``, ``rounds``, ``delta``) with ``canaries`` canary clients beside the
    run's planned cohort, on updates of the audited method's real sent dimension."""
    from fedsim.population import cohort_sampling

    return audit_client_level(
        dim=sent_dimension(config),
        clip=config.client_clip,
        noise_multiplier=config.client_noise_multiplier,
        rounds=config.rounds,
        canaries=canaries,
        real_clients=cohort_sampling(config).expected_size(config.population_size),
        delta=config.delta,
        modulus_bits=config.secagg_modulus_bits,
        confidence=confidence,
        control=control,
    )

