"""The run's secure-aggregation settings, the same at the server and every client.

:class:`SecureSumConfig` chooses and checks each round's protocol parameters (Shamir
threshold t, SecAgg+ degree k, ring, collusion bound) for the cohort with
:mod:`secagg.params`, and gives the code that takes an update into the ring: the
fixed-point code with headroom for the cohort's sum (:meth:`SecureSumConfig.codec`), or,
with client-level DP, the Skellam mechanism's (:meth:`SecureSumConfig.skellam`,
:mod:`fedsim.dp.skellam`), whose integer noise the cohort adds in shares.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from fedsim.config import RunConfig
from fedsim.dp.skellam import MAX_SHARE_MU, SkellamParams, padded_dim, skellam_params
from fedsim.secure_sum.dropouts import DropoutPlan
from fedsim.transport.vocabulary import NO_STAGE
from secagg import stages
from secagg.encoding import FixedPointCodec, check_ring
from secagg.params import THREAT_MODELS, ProtocolParams, check_secagg_params, choose_secagg_params, choose_threshold
from secagg.threat_models import ACTIVE

__all__ = [
    "GRAPHS", "GUARD_BITS", "MAX_DROPOUT_LIMIT", "SecureSumConfig", "dropout_plan", "largest_cohort_gamma", "reply_limit",
    "secure_sum_config", "stage_limits",
]

GUARD_BITS = 8
"""Ring bits kept free above the cohort's largest honest sum: a random out-of-code value
lands inside the honest range with probability about 2^-8 per coordinate."""

GRAPHS = ("full", "sparse")
"""``full``: every pair of clients shares masks (Bonawitz et al. 2017). ``sparse``: a
random k-regular graph, k = O(log n) (SecAgg+, Bell et al. 2020)."""

MAX_DROPOUT_LIMIT = 0.5

MIN_COHORT = 2
"""The smallest cohort a secure sum runs for (one client's "sum" would be its update)."""
"""The largest declared real-dropout fraction a run may plan for."""


@dataclass(frozen=True)
class SecureSumConfig:
    """How every round's secure sum is set up; the same at the server and every client.

    ``threshold``: Shamir t, as a count (int >= 1) or a fraction (float in (0, 1]) of
    the neighbourhood (the cohort for ``full``, k + 1 for ``sparse``); None chooses an
    honest majority raised to the smallest safe t (:func:`secagg.params.choose_threshold`).
    ``neighbours``: SecAgg+ degree k (even) for ``sparse``; None chooses the smallest safe
    k (:func:`secagg.params.choose_secagg_params`). ``collusion``: clients that may
    collude with the server, a count (int) or a fraction of the cohort (float).
    ``dropout_rate``: the injected dropout probability per round (sizes the abort
    probability, and privacy when above ``max_dropout``). ``max_dropout``: the declared
    bound on real dropouts per round, a fraction of the cohort in [0, 0.5] (privacy is
    sized for floor(max(dropout_rate, max_dropout) * n) dropped clients).
    ``max_abort_probability``: the accepted chance that too few survive.
    ``consistency_check``: run the ConsistencyCheck stage (always on under ``active``).
    ``threat_model``: one of :data:`secagg.params.THREAT_MODELS`; ``active`` adds the
    PKI checks, the ConsistencyCheck and t > (s + c) / 2.
    ``timeout_s``: how long the server waits for a process's reply to one stage.
    ``client_noise_multiplier`` z > 0 turns client-level DP on: every member of a cohort of
    n clips its whole update to ``client_clip`` S and adds 1/n of integer Skellam noise whose
    sum has variance (zS)² in the update's units (:meth:`skellam`); ``clip_range`` then
    plays no part. ``population``: the most clients a cohort can hold (sizes the Skellam
    scale; 0: the cohort itself).
    """

    clip_range: float = 1.0
    modulus_bits: int = 32
    threshold: int | float | None = None
    graph: str = "full"
    neighbours: int | None = None
    collusion: int | float = 0
    dropout_rate: float = 0.0
    max_abort_probability: float = 2.0**-20
    consistency_check: bool = False
    timeout_s: float = 60.0
    max_dropout: float = 0.1
    threat_model: str = "semi-honest"
    client_noise_multiplier: float = 0.0
    client_clip: float = 1.0
    population: int = 0

    def __post_init__(self) -> None:
        check_ring(self.clip_range, self.modulus_bits)
        if self.graph not in GRAPHS:
            raise ValueError(f"graph={self.graph!r} is invalid: expected one of {GRAPHS}")
        if self.neighbours is not None and self.graph != "sparse":
            raise ValueError(f"neighbours={self.neighbours!r} is invalid: only the sparse graph has a degree")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < math.inf):
            raise ValueError(f"timeout_s={self.timeout_s!r} is invalid: expected seconds > 0")
        if self.threat_model not in THREAT_MODELS:
            raise ValueError(f"threat_model={self.threat_model!r} is invalid: expected one of {THREAT_MODELS}")
        if isinstance(self.population, bool) or not isinstance(self.population, int) or self.population < 0:
            raise ValueError(f"population={self.population!r} is invalid: expected an integer >= 0")
        dropout = self.max_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= MAX_DROPOUT_LIMIT:
            raise ValueError(f"max_dropout={dropout!r} is invalid: expected a fraction in [0, {MAX_DROPOUT_LIMIT}]")

    @property
    def active(self) -> bool:
        """Whether the active threat model is on (PKI, ConsistencyCheck, t > (s + c) / 2)."""
        return self.threat_model == ACTIVE

    def _sizing(self) -> dict:
        return dict(max_abort_probability=self.max_abort_probability, max_dropout=self.max_dropout, active=self.active)

    def codec(self, cohort_size: int) -> FixedPointCodec:
        """The fixed-point code with headroom for the sum of ``cohort_size`` updates, and
        :data:`GUARD_BITS` more, so the server's range check can flag a sum that no
        clipped inputs can produce (:meth:`~secagg.encoding.FixedPointCodec.out_of_range`)."""
        return FixedPointCodec(self.clip_range, cohort_size, self.modulus_bits, guard_bits=GUARD_BITS)

    @property
    def client_level(self) -> bool:
        """Whether every secure sum is a client-level DP release (the Skellam mechanism)."""
        return self.client_noise_multiplier > 0

    def skellam(self, dim: int, cohort_size: int) -> SkellamParams:
        """The Skellam mechanism of one secure sum: updates of ``dim`` values from a cohort of
        ``cohort_size`` (ValueError naming the field when the ring cannot hold the sum,
        :func:`fedsim.dp.skellam.skellam_params`).

        Each member adds 1/n of the noise for the cohort n it is actually in (the protocol's
        client ids), not for the expected cohort, and the scale γ is the one chosen for the
        largest cohort (``population``), so without dropouts every release carries exactly
        the configured noise on the same lattice whatever size a Poisson cohort came out:
        neither the noise level nor the decoded sum's grid reveals how many took part.
        Dropouts lower the noise (the ledger records the realized μ).
        """
        if not self.client_level:
            raise ValueError("client_noise_multiplier=0: client-level DP is off, there is no Skellam mechanism")
        largest = max(self.population, cohort_size)
        gamma = largest_cohort_gamma(dim, self.client_clip, self.client_noise_multiplier, largest, self.modulus_bits)
        return skellam_params(
            dim, self.client_clip, self.client_noise_multiplier, cohort_size, self.modulus_bits, gamma=gamma,
        )

    def ring_dim(self, dim: int) -> int:
        """How many ring elements carry an update of ``dim`` values (the Skellam code pads to 2^k)."""
        return padded_dim(dim) if self.client_level else dim

    def shape(self, cohort_size: int) -> tuple[int, int | None]:
        """(threshold, neighbours) for a cohort of this size, checked; ValueError if none is safe.

        A cohort of one is refused: its "sum" would be that client's update.
        """
        n = cohort_size
        if n < MIN_COHORT:
            raise ValueError(f"cohort={n} is too small: secure aggregation needs at least 2 clients")
        sizing = self._sizing()
        if self.threshold is None and self.neighbours is None:
            return choose_secagg_params(n, self.dropout_rate, self.collusion, self.graph, **sizing)
        neighbours = self.neighbours
        if neighbours is None and self.graph == "sparse":
            _, neighbours = choose_secagg_params(n, self.dropout_rate, self.collusion, "sparse", **sizing)
        if neighbours is not None and neighbours >= n - 1:
            neighbours = None  # a degree of n - 1 is the complete graph
        size = n if neighbours is None else neighbours + 1
        if self.threshold is None:  # the degree was given: its errors name neighbours, not the unset threshold
            threshold = choose_threshold(n, neighbours, self.dropout_rate, self.collusion, **sizing)
        elif isinstance(self.threshold, float):
            threshold = max(1, math.ceil(self.threshold * size))
        else:
            threshold = self.threshold
        check_secagg_params(n, threshold, neighbours, self.dropout_rate, self.collusion, **sizing)
        return threshold, neighbours

    def protocol_params(self, session: bytes, round_idx: int, cohort: tuple[int, ...], dim: int) -> ProtocolParams:
        """The parameters of one round: what the server and every client must agree on
        (``active`` turns the ConsistencyCheck on)."""
        threshold, neighbours = self.shape(len(cohort))
        return ProtocolParams(
            session=session,
            round_idx=round_idx,
            client_ids=cohort,
            dim=dim,
            threshold=threshold,
            modulus_bits=self.modulus_bits,
            neighbours=neighbours,
            consistency_check=self.consistency_check or self.active,
            active=self.active,
        )


@functools.lru_cache(maxsize=64)
def largest_cohort_gamma(dim: int, clip: float, noise_multiplier: float, cohort: int, modulus_bits: int) -> float:
    """The Skellam scale γ chosen for a cohort of ``cohort`` (:func:`fedsim.dp.skellam.skellam_params`),
    lowered if need be so that a cohort of 2's noise shares stay in the Poisson sampler's range
    (:data:`~fedsim.dp.skellam.MAX_SHARE_MU`); every smaller cohort's sum fits the ring at this γ
    too (less signal, the same total noise)."""
    gamma = skellam_params(dim, clip, noise_multiplier, cohort, modulus_bits).gamma
    if noise_multiplier > 0:
        gamma = min(gamma, math.sqrt(2 * MIN_COHORT * MAX_SHARE_MU) / (noise_multiplier * clip))
    return gamma


def reply_limit(dim: int, cohort: int, hosted: int) -> int:
    """Largest REPLY frame body a process hosting ``hosted`` clients can legitimately send.

    Generous (8 bytes per ring element, 4 KiB per peer, 64 KiB slack per client); the
    relay refuses anything larger before allocating it.
    """
    return hosted * (8 * dim + 4096 * cohort + 65536) + 65536


_PER_PEER_BYTES = 512
"""Generous bytes per cohort peer in one client's reply: a share ciphertext entry (~100),
a revealed share (~45), an accusation with its channel key (~50), a signed id (~72)."""

_PER_CLIENT_BYTES = 4096
"""Slack per hosted client: keys, commitment, signature, counts, entry headers."""


def stage_limits(dim: int, cohort: int, hosted: int) -> dict[str, int]:
    """Largest body of each frame a process hosting ``hosted`` clients may send, by stage.

    REPLY frames per protocol stage (Bonawitz et al. 2017, Fig. 4: only
    MaskedInputCollection carries the d ring elements, 8 bytes each at most), and the
    REPORT (``NO_STAGE``). The relay refuses a header announcing more before it reads or
    allocates the body, and drops the sender named (:meth:`ServerRelay.set_stage_limits`).
    """
    peers = _PER_PEER_BYTES * cohort
    per_client = {
        stages.ADVERTISE_KEYS: 0,
        stages.SHARE_KEYS: peers,
        stages.MASKED_INPUT_COLLECTION: 8 * dim + peers,
        stages.CONSISTENCY_CHECK: 0,
        stages.UNMASKING: peers,
        NO_STAGE: 0,
    }
    return {stage: hosted * (_PER_CLIENT_BYTES + size) + 65536 for stage, size in per_client.items()}


def secure_sum_config(config: RunConfig) -> SecureSumConfig:
    """The secure-sum settings of a run: sized for its injected dropout rate and its
    declared real-dropout bound, under its threat model."""
    return SecureSumConfig(
        clip_range=config.secagg_clip_range,
        modulus_bits=config.secagg_modulus_bits,
        threshold=config.secagg_threshold,
        graph=config.secagg_graph,
        neighbours=config.secagg_neighbours,
        collusion=config.secagg_collusion,
        dropout_rate=config.secagg_dropout_probability,
        max_abort_probability=config.secagg_max_abort_probability,
        consistency_check=config.secagg_consistency_check,
        timeout_s=config.secagg_timeout_s,
        max_dropout=config.secagg_max_dropout,
        threat_model=config.secagg_threat_model,
        client_noise_multiplier=config.client_noise_multiplier,
        client_clip=config.client_clip,
        population=config.population_size,
    )


def dropout_plan(config: RunConfig) -> DropoutPlan:
    """The run's injected dropouts (seeded by the run's public seed)."""
    return DropoutPlan(config.dropout_rate, config.dropout_stages, config.dropout_schedule, config.seed)
