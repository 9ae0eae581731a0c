"""Secure summation of client updates over torch.distributed, built on :mod:`secagg`.

fedsim's side of the protocol of Bonawitz et al., CCS 2017 ("Practical Secure Aggregation
for Privacy-Preserving Machine Learning", Fig. 4: AdvertiseKeys, ShareKeys,
MaskedInputCollection, optional ConsistencyCheck, Unmasking), with the sparse SecAgg+
graph of Bell et al., CCS 2020 as an option. ``secagg.protocol`` turns each stage into
bytes; this module, with the round's parameters from
:class:`~fedsim.secure_sum.config.SecureSumConfig`,

- encodes each hosted client's float update into the ring (:class:`SumCode`): without
  client-level DP the fixed-point code (clipping, stochastic rounding with coins keyed
  from the caller's ChaCha20 CSPRNG, headroom for the cohort's sum); with it the Skellam
  mechanism (:mod:`fedsim.dp.skellam`: clip to S, scale, rotate with the sum's public
  seed, round, add this client's share of integer Skellam noise),
- runs the stages over the relay (:mod:`fedsim.secure_sum.stages`: the server relays every
  message, one frame per process per stage, deadlines, dropouts),
- decodes the survivors' sum at the server and checks it: a sum that no honest inputs
  of that many survivors can produce (guard bits in the ring: :meth:`SumCode.out_of_range`)
  marks the round corrupted and is never applied.

Threat models (:data:`secagg.params.THREAT_MODELS`): under ``active`` the server and
every client check every advertised key against the run's PKI
(:mod:`fedsim.secure_sum.identity`) and each client signs with its identity key.

The server never holds an unmasked update: it holds masked vectors, the shares it is
given in Unmasking, and the sum.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsim.dp.randomness import SecretRandom
from fedsim.dp.skellam import SkellamCodec, rotation_seed
from fedsim.secure_sum.config import SecureSumConfig
from fedsim.secure_sum.dropouts import DropoutPlan
from fedsim.secure_sum.stages import RoundOutcome, client_stages, server_stages
from fedsim.transport.relay import ClientRelay, ServerRelay
from secagg.encoding import FixedPointCodec, as_ring_array
from secagg.graph import NeighbourGraph
from secagg.protocol import ClientRound, ProtocolError, ServerRound

__all__ = ["SecureSum", "SumCode", "checked_sum", "sum_code", "client_secure_sum", "exchange_index", "round_and_phase", "server_secure_sum"]

logger = logging.getLogger(__name__)


def exchange_index(round_idx: int, phase_idx: int, phases: int) -> int:
    """The protocol round of one phase: a fresh index per secure sum, so no message replays across phases."""
    return (round_idx - 1) * phases + phase_idx + 1


def round_and_phase(exchange: int, phases: int) -> tuple[int, int]:
    """Inverse of :func:`exchange_index`: (round, phase index)."""
    round_idx, phase_idx = divmod(exchange - 1, phases)
    return round_idx + 1, phase_idx


@dataclass(frozen=True)
class SumCode:
    """How one secure sum's updates enter the ring and its sum leaves it.

    Exactly one of ``fixed`` (the fixed-point code) and ``skellam`` (the Skellam
    mechanism, with the sum's public rotation ``seed``) is set; :func:`sum_code` chooses.
    """

    fixed: FixedPointCodec | None = None
    skellam: SkellamCodec | None = None
    seed: bytes = b""

    @property
    def dim(self) -> int | None:
        """Ring elements per input (the Skellam code pads to 2^k); None: the update's own length."""
        return self.skellam.params.padded_dim if self.skellam is not None else None

    def encode(self, update: torch.Tensor, rounding: SecretRandom) -> np.ndarray:
        """One client's ring input: its update encoded (and, with Skellam, its noise share added)."""
        if self.skellam is not None:
            return self.skellam.encode(update, self.seed, rounding.numpy)
        return as_ring_array(self.fixed.encode(update, rounding.key()))

    def out_of_range(self, result: np.ndarray, survivors: int) -> int:
        """Coordinates of the ring sum no honest inputs of ``survivors`` clients produce."""
        code = self.skellam if self.skellam is not None else self.fixed
        return code.out_of_range(result, survivors)

    def bound(self, survivors: int) -> str:
        """The honest range of one coordinate, for the corrupted round's reason."""
        if self.skellam is not None:
            return f"+-{self.skellam.params.honest_bound(survivors):.6g} (the Skellam sum's honest bound)"
        return f"+-{survivors} x {self.fixed.clip_range:g}"

    def decode(self, result: np.ndarray, survivors: int) -> torch.Tensor:
        """The float32 sum of the survivors' updates (with Skellam: plus their noise)."""
        if self.skellam is not None:
            return self.skellam.decode_sum(result, survivors, self.seed)
        return self.fixed.decode_sum(result)


def sum_code(config: SecureSumConfig, *, session: bytes, exchange: int, dim: int, cohort_size: int) -> SumCode:
    """The code of one secure sum of ``dim``-value updates from a cohort of ``cohort_size``."""
    if config.client_level:
        return SumCode(skellam=SkellamCodec(config.skellam(dim, cohort_size)), seed=rotation_seed(session, exchange))
    return SumCode(fixed=config.codec(cohort_size))


@dataclass(frozen=True)
class SecureSum:
    """The server's result of one secure sum.

    ``total``: float32 sum of the survivors' (clipped, encoded) updates, None when the
    round aborted or its sum failed the range check. ``rejections``: (client, stage,
    reason, verdict) of every client message the protocol rejected. ``transcript``: everything the server received (stage, sender,
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
    verify_keys: Mapping[int, bytes] | None = None,
) -> SecureSum:
    """Run the server's side of one secure sum over the processes ``hosts`` ({rank: client ids}).

    Never raises on client behaviour: dropouts, refusals and malformed messages end as
    fewer survivors or an aborted round (``outcome.aborted``, ``outcome.abort_reason``).
    Raises ValueError before any message if no safe parameters exist for ``cohort``.
    ``keep_transcript``: keep everything the server received in ``transcript``.
    ``before_input(ranks)``: called when the MaskedInputCollection requests are out,
    before their replies are awaited (see :func:`fedsim.secure_sum.stages.server_stages`).
    ``verify_keys``: the cohort's identity verify keys (the PKI; required under the
    active threat model).
    """
    code = sum_code(config, session=session, exchange=round_idx, dim=dim, cohort_size=len(cohort))
    params = config.protocol_params(session, round_idx, cohort, code.dim or dim)
    protocol = ServerRound(params, keep_transcript=keep_transcript, verify_keys=verify_keys)
    outcome = server_stages(
        relay, hosts, protocol, round_idx=round_idx, cohort=cohort, timeout_s=config.timeout_s, before_input=before_input
    )
    total = None
    if not outcome.aborted:
        outcome, total = checked_sum(code, protocol.result, outcome)
    if outcome.aborted:
        logger.warning("round %d: secure sum aborted: %s", round_idx, outcome.abort_reason)
    return SecureSum(outcome, total, outcome.rejections, tuple(protocol.transcript))


def checked_sum(code: SumCode, result: np.ndarray, outcome: RoundOutcome) -> tuple[RoundOutcome, torch.Tensor | None]:
    """The decoded sum, or a corrupted outcome and None when the range check fails.

    No survivor's honest input moves a coordinate beyond the code's per-client range, so
    a coordinate of the sum of s survivors beyond s times it (with Skellam: beyond the
    honest bound, which an honest sum crosses with at most the stated wrap probability)
    proves that some client sent an input outside the code (Bonawitz et al. 2017 sum any
    ring elements they are given; the check is ours).
    """
    survivors = len(outcome.survivors)
    bad = code.out_of_range(result, survivors)
    if not bad:
        return outcome, code.decode(result, survivors)
    reason = (
        f"corrupted: the decoded sum of {survivors} survivors is outside {code.bound(survivors)} "
        f"at {bad} coordinate(s); some client sent an input outside the code; the sum is not applied"
    )
    return dataclasses.replace(outcome, aborted=True, abort_reason=reason, corrupted=True), None


def client_secure_sum(
    relay: ClientRelay,
    hosted: Sequence[int],
    updates: Callable[[list[int]], Mapping[int, torch.Tensor]],
    *,
    session: bytes,
    round_idx: int,
    dim: int,
    config: SecureSumConfig,
    rounding: SecretRandom,
    dropouts: DropoutPlan | None = None,
    identities: Mapping[int, Ed25519PrivateKey] | None = None,
    verify_keys: Mapping[int, bytes] | None = None,
) -> RoundOutcome:
    """Take part in one secure sum for the virtual clients ``hosted`` by this process.

    The key stages run first; when MaskedInputCollection arrives, ``updates(ids)`` gives
    the flat float update (``dim`` values) of each client still in the round that is
    asked for it (it may train them there), and each is encoded and masked: it leaves
    the process only masked. ``rounding`` (an OS-keyed :class:`SecretRandom`) draws
    the rounding coins' keys, or with Skellam the rounding coins and the noise; masks come from fresh
    X25519 keys and AES-CTR inside the protocol. ``identities`` / ``verify_keys``: the hosted clients' identity keys and
    the PKI (required under the active threat model). Returns the outcome the server
    announced.
    """
    plan = dropouts or DropoutPlan()
    rounds: dict[int, ClientRound] = {}
    code: SumCode | None = None

    def make_rounds(cohort: tuple[int, ...]) -> dict[int, ClientRound]:
        nonlocal code
        mine = [cid for cid in sorted(hosted) if cid in cohort]
        if mine:
            code = sum_code(config, session=session, exchange=round_idx, dim=dim, cohort_size=len(cohort))
            params = config.protocol_params(session, round_idx, cohort, code.dim or dim)
            graph = NeighbourGraph(session, round_idx, cohort, params.neighbours)
            rounds.update({
                cid: ClientRound(
                    params, cid, graph=graph, verify_keys=verify_keys,
                    signing_key=identities.get(cid) if identities is not None else None,
                )
                for cid in mine
            })
        return rounds

    def provide_input(client_ids: list[int]) -> None:
        given = updates(client_ids)
        for cid in client_ids:
            update = given[cid].detach().to(device="cpu", dtype=torch.float32).reshape(-1)
            if update.numel() != dim:
                raise ValueError(f"update of client {cid} has {update.numel()} values, expected dim={dim}")
            rounds[cid].set_input(code.encode(update, rounding))

    return client_stages(
        relay,
        make_rounds,
        round_idx=round_idx,
        drops=lambda stage, cid: plan.drops(round_idx, stage, cid),
        refusal=ProtocolError,
        provide_input=provide_input,
    )
