"""The run's secure-aggregation settings, the same at the server and every client.

:class:`SecureSumConfig` chooses and checks each round's protocol parameters (Shamir
threshold t, SecAgg+ degree k, ring, collusion bound) for the cohort with
:mod:`secagg.params`, and gives the fixed-point code with headroom for the cohort's sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsim.config import RunConfig
from fedsim.secure_sum.dropouts import DropoutPlan
from secagg.encoding import FixedPointCodec, check_ring
from secagg.params import ProtocolParams, check_secagg_params, choose_secagg_params

__all__ = ["GRAPHS", "SecureSumConfig", "dropout_plan", "reply_limit", "secure_sum_config"]

GRAPHS = ("full", "sparse")
"""``full``: every pair of clients shares masks (Bonawitz et al. 2017). ``sparse``: a
random k-regular graph, k = O(log n) (SecAgg+, Bell et al. 2020)."""


@dataclass(frozen=True)
class SecureSumConfig:
    """How every round's secure sum is set up; the same at the server and every client.

    ``threshold``: Shamir t, as a count (int >= 1) or a fraction (float in (0, 1]) of
    the neighbourhood (the cohort for ``full``, k + 1 for ``sparse``); None chooses the
    largest safe honest-majority t for ``dropout_rate`` and ``collusion``
    (:func:`secagg.params.choose_secagg_params`). ``neighbours``: SecAgg+ degree k
    (even) for ``sparse``; None chooses the smallest safe k. ``collusion``: clients that
    may collude with the server, a count (int) or a fraction of the cohort (float).
    ``dropout_rate``: the dropout probability the parameters must tolerate.
    ``max_abort_probability``: the accepted chance that too few survive.
    ``timeout_s``: how long the server waits for a process's reply to one stage.
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

    def __post_init__(self) -> None:
        check_ring(self.clip_range, self.modulus_bits)
        if self.graph not in GRAPHS:
            raise ValueError(f"graph={self.graph!r} is invalid: expected one of {GRAPHS}")
        if self.neighbours is not None and self.graph != "sparse":
            raise ValueError(f"neighbours={self.neighbours!r} is invalid: only the sparse graph has a degree")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s < math.inf):
            raise ValueError(f"timeout_s={self.timeout_s!r} is invalid: expected seconds > 0")

    def codec(self, cohort_size: int) -> FixedPointCodec:
        """The fixed-point code with headroom for the sum of ``cohort_size`` updates."""
        return FixedPointCodec(self.clip_range, cohort_size, self.modulus_bits)

    def shape(self, cohort_size: int) -> tuple[int, int | None]:
        """(threshold, neighbours) for a cohort of this size, checked; ValueError if none is safe.

        A cohort of one is refused: its "sum" would be that client's update.
        """
        n = cohort_size
        if n < 2:
            raise ValueError(f"cohort={n} is too small: secure aggregation needs at least 2 clients")
        if self.threshold is None and self.neighbours is None:
            return choose_secagg_params(
                n, self.dropout_rate, self.collusion, self.graph, max_abort_probability=self.max_abort_probability
            )
        neighbours = self.neighbours
        if neighbours is None and self.graph == "sparse":
            _, neighbours = choose_secagg_params(
                n, self.dropout_rate, self.collusion, "sparse", max_abort_probability=self.max_abort_probability
            )
        if neighbours is not None and neighbours >= n - 1:
            neighbours = None  # a degree of n - 1 is the complete graph
        size = n if neighbours is None else neighbours + 1
        if self.threshold is None:
            threshold = size // 2 + 1
        elif isinstance(self.threshold, float):
            threshold = max(1, math.ceil(self.threshold * size))
        else:
            threshold = self.threshold
        check_secagg_params(
            n, threshold, neighbours, self.dropout_rate, self.collusion, max_abort_probability=self.max_abort_probability
        )
        return threshold, neighbours

    def protocol_params(self, session: bytes, round_idx: int, cohort: tuple[int, ...], dim: int) -> ProtocolParams:
        """The parameters of one round: what the server and every client must agree on."""
        threshold, neighbours = self.shape(len(cohort))
        return ProtocolParams(
            session=session,
            round_idx=round_idx,
            client_ids=cohort,
            dim=dim,
            threshold=threshold,
            modulus_bits=self.modulus_bits,
            neighbours=neighbours,
            consistency_check=self.consistency_check,
        )


def reply_limit(dim: int, cohort: int, hosted: int) -> int:
    """Largest REPLY frame body a process hosting ``hosted`` clients can legitimately send.

    Generous (8 bytes per ring element, 4 KiB per peer, 64 KiB slack per client); the
    relay refuses anything larger before allocating it.
    """
    return hosted * (8 * dim + 4096 * cohort + 65536) + 65536


def secure_sum_config(config: RunConfig) -> SecureSumConfig:
    """The secure-sum settings of a run (the parameters tolerate its injected dropout rate)."""
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
    )


def dropout_plan(config: RunConfig) -> DropoutPlan:
    """The run's injected dropouts (seeded by the run's public seed)."""
    return DropoutPlan(config.dropout_rate, config.dropout_stages, config.dropout_schedule, config.seed)
