"""Secure summation of client updates over torch.distributed, built on :mod:`secagg`.

fedsim's side of the protocol of Bonawitz et al., CCS 2017 ("Practical Secure Aggregation
for Privacy-Preserving Machine Learning", Fig. 4: AdvertiseKeys, ShareKeys,
MaskedInputCollection, optional ConsistencyCheck, Unmasking), with the sparse SecAgg+
graph of Bell et al., CCS 2020 as an option. ``secagg.protocol`` turns each stage into
bytes; this module

- chooses the round's parameters from the run's settings and the cohort
  (:class:`SecureSumConfig`: threshold, graph degree, ring, collusion bound),
- encodes each hosted client's float update with the fixed-point code (stochastic
  rounding from a CSPRNG-seeded generator, clipping, headroom for the cohort's sum),
- runs the stages over the relay (:mod:`fedsim.stages`: the server relays every
  message, one frame per process per stage, deadlines, dropouts),
- decodes the survivors' sum at the server.

The server never holds an unmasked update: it holds masked vectors, the shares it is
given in Unmasking, and the sum.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedsim.config import RunConfig
from fedsim.dropouts import DropoutPlan
from fedsim.relay import ClientRelay, ServerRelay
from fedsim.stages import RoundOutcome, client_stages, server_stages
from secagg.encoding import FixedPointCodec, as_ring_array, check_ring
from secagg.graph import NeighbourGraph
from secagg.params import check_secagg_params, choose_secagg_params
from secagg.protocol import ClientRound, ProtocolError, ProtocolParams, ServerRound

__all__ = [
    "GRAPHS",
    "SecureSum",
    "SecureSumConfig",
    "client_secure_sum",
    "dropout_plan",
    "reply_limit",
    "secure_sum_config",
    "server_secure_sum",
]

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class SecureSum:
    """The server's result of one secure sum.

    ``total``: float32 sum of the survivors' (clipped, encoded) updates, None when the
    round aborted. ``rejections``: (sender, stage, reason) of every client message the
    protocol rejected. ``transcript``: everything the server received (stage, sender,
    bytes): its whole view of the round.
    """

    outcome: RoundOutcome
    total: torch.Tensor | None
    rejections: tuple
    transcript: tuple

    @property
    def mean(self) -> torch.Tensor | None:
        """The survivors' mean update (``total`` / number of survivors)."""
        if self.total is None:
            return None
        return self.total / len(self.outcome.survivors)


def server_secure_sum(
    relay: ServerRelay,
    hosts: Mapping[int, Sequence[int]],
    *,
    session: bytes,
    round_idx: int,
    cohort: tuple[int, ...],
    dim: int,
    config: SecureSumConfig,
    keep_transcript: bool = False,
    before_input: Callable[[list[int]], None] | None = None,
) -> SecureSum:
    """Run the server's side of one secure sum over the processes ``hosts`` ({rank: client ids}).

    Never raises on client behaviour: dropouts, refusals and malformed messages end as
    fewer survivors or an aborted round (``outcome.aborted``, ``outcome.abort_reason``).
    Raises ValueError before any message if no safe parameters exist for ``cohort``.
    ``keep_transcript``: keep everything the server received in ``transcript``.
    ``before_input(ranks)``: called when the MaskedInputCollection requests are out,
    before their replies are awaited (see :func:`fedsim.stages.server_stages`).
    """
    params = config.protocol_params(session, round_idx, cohort, dim)
    protocol = ServerRound(params, keep_transcript=keep_transcript)
    outcome = server_stages(
        relay, hosts, protocol, round_idx=round_idx, cohort=cohort, timeout_s=config.timeout_s, before_input=before_input
    )
    total = None if outcome.aborted else config.codec(len(cohort)).decode_sum(protocol.result)
    for sender, stage, reason in protocol.rejections:
        logger.warning("round %d: rejected client %d at %s: %s", round_idx, sender, stage, reason)
    if outcome.aborted:
        logger.warning("round %d: secure sum aborted: %s", round_idx, outcome.abort_reason)
    return SecureSum(outcome, total, tuple(protocol.rejections), tuple(protocol.transcript))


def client_secure_sum(
    relay: ClientRelay,
    hosted: Sequence[int],
    updates: Callable[[list[int]], Mapping[int, torch.Tensor]],
    *,
    session: bytes,
    round_idx: int,
    dim: int,
    config: SecureSumConfig,
    generator: torch.Generator,
    dropouts: DropoutPlan | None = None,
) -> RoundOutcome:
    """Take part in one secure sum for the virtual clients ``hosted`` by this process.

    The key stages run first; when MaskedInputCollection arrives, ``updates(ids)`` gives
    the flat float update (``dim`` values) of each client still in the round that is
    asked for it (it may train them there), and each is encoded and masked: it leaves
    the process only masked. ``generator`` draws the stochastic-rounding coins (seed it
    from the OS CSPRNG); masks come from fresh X25519 keys and AES-CTR inside the
    protocol. Returns the outcome the server announced.
    """
    plan = dropouts or DropoutPlan()
    rounds: dict[int, ClientRound] = {}
    codec: FixedPointCodec | None = None

    def make_rounds(cohort: tuple[int, ...]) -> dict[int, ClientRound]:
        nonlocal codec
        mine = [cid for cid in sorted(hosted) if cid in cohort]
        if mine:
            params = config.protocol_params(session, round_idx, cohort, dim)
            graph = NeighbourGraph(session, round_idx, cohort, params.neighbours)
            rounds.update({cid: ClientRound(params, cid, graph=graph) for cid in mine})
            codec = config.codec(len(cohort))
        return rounds

    def provide_input(client_ids: list[int]) -> None:
        given = updates(client_ids)
        for cid in client_ids:
            update = given[cid].detach().to(device="cpu", dtype=torch.float32).reshape(-1)
            if update.numel() != dim:
                raise ValueError(f"update of client {cid} has {update.numel()} values, expected dim={dim}")
            rounds[cid].set_input(as_ring_array(codec.encode(update, generator)))

    return client_stages(
        relay,
        make_rounds,
        round_idx=round_idx,
        drops=lambda stage, cid: plan.drops(round_idx, stage, cid),
        refusal=ProtocolError,
        provide_input=provide_input,
    )
