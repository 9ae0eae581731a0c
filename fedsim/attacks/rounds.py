"""The in-memory round the protocol scenarios attack, and the wire helpers they forge with.

:class:`MemoryRound` runs one round of the real protocol (Bonawitz et al., CCS 2017,
Fig. 4; the SecAgg+ graph of Bell et al., CCS 2020) with a real
:class:`secagg.server.ServerRound` and one real :class:`secagg.client.ClientRound` per
client in this process, stage by stage, so that a scenario can stand in for the server
(rewrite, withhold, replay or forge any request) or for a client (a ``ClientRound``
subclass whose replies it spoils). Nothing of the protocol is mocked: every refusal a
scenario reports is a client's :class:`~secagg.messages.ProtocolError`, every rejection
the server's own record.

The two threat models map to protocol parameters as ``fedsim run`` maps them:
``semi-honest`` runs without the ConsistencyCheck and without a PKI; ``active`` sets
``ProtocolParams(active=True, consistency_check=True)`` and gives every client a
long-term Ed25519 identity key, every party the PKI's verify keys.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections.abc import Iterable, Mapping

import numpy as np

from fedsim.errors import FedsimError
from fedsim.secure_sum.identity import ClientPKI, local_pki
from secagg import messages as wire
from secagg import stages
from secagg.agreement import self_mask_key
from secagg.client import ClientRound
from secagg.graph import NeighbourGraph, graph_for
from secagg.masking import add_masks_, pairwise_mask_sign
from secagg.messages import ProtocolError
from secagg.params import ProtocolParams
from secagg.server import ServerRound
from secagg.shamir import (
    SHARE_BYTES,
    evaluation_points,
    join_limbs,
    lagrange_at_zero,
    reconstruct,
    shares_from_bytes,
)
from secagg.threat_models import ACTIVE

__all__ = [
    "ForgeryRefused",
    "MemoryRound",
    "accepted_threshold",
    "body_of",
    "garbage_share",
    "honest_threshold",
    "masked_vector",
    "max_ring_error",
    "pairwise_key_ids",
    "plain_sum",
    "protocol_params",
    "random_inputs",
    "reason_of",
    "rebody",
    "recover_secret",
    "refusal_summary",
    "rejections",
    "request",
    "revealed_pairwise_keys",
    "revealed_shares",
    "secure_sum_config",
    "short",
    "split_tail",
    "split_unmasking",
    "threshold_refusal",
    "unmask",
    "unmasking_body",
]

logger = logging.getLogger(__name__)

_LENGTH_FIELD = wire.HEADER.size - 4
"""Offset of the header's u32 body length (the last field of the 52-byte header)."""


# --- parameters per threat model -----------------------------------------------------------


def protocol_params(
    n: int,
    threshold: int,
    threat_model: str,
    *,
    dim: int = 16,
    round_idx: int = 1,
    session: bytes | None = None,
    neighbours: int | None = None,
    modulus_bits: int = 32,
) -> ProtocolParams:
    """Parameters of a round of clients 1..n under ``threat_model`` (ValueError if refused)."""
    active = threat_model == ACTIVE
    return ProtocolParams(
        session=os.urandom(16) if session is None else session,
        round_idx=round_idx,
        client_ids=tuple(range(1, n + 1)),
        dim=dim,
        threshold=threshold,
        modulus_bits=modulus_bits,
        neighbours=neighbours,
        consistency_check=active,
        active=active,
    )


def secure_sum_config(threat_model: str, **fields: object):
    """A :class:`~fedsim.secure_sum.config.SecureSumConfig` for ``threat_model`` (the run
    settings ``fedsim run`` would resolve), with ``fields`` set; fields the class does not
    have are left out (so a scenario runs against the sizing as it is)."""
    from fedsim.secure_sum.config import SecureSumConfig

    known = {f.name for f in dataclasses.fields(SecureSumConfig)}
    if "threat_model" in known:
        fields["threat_model"] = threat_model
    if threat_model == ACTIVE and "consistency_check" in known:
        fields["consistency_check"] = True
    return SecureSumConfig(**{k: v for k, v in fields.items() if k in known})


def threshold_refusal(n: int, threshold: int, threat_model: str) -> str | None:
    """Why the threat model's checks refuse threshold t for a complete-graph cohort of n,
    or None if they accept it: the protocol's own parameter checks, then the sizing a run
    applies (:meth:`SecureSumConfig.shape`; the abort-probability bound is relaxed to 1/2,
    since it is about availability, not privacy)."""
    try:
        protocol_params(n, threshold, threat_model)
        secure_sum_config(threat_model, threshold=threshold, graph="full", max_abort_probability=0.5).shape(n)
    except ValueError as exc:
        return str(exc)
    return None


def accepted_threshold(n: int, threat_model: str, candidates: Iterable[int]) -> int | None:
    """The first of ``candidates`` the threat model accepts for n clients, or None."""
    for t in candidates:
        if 1 <= t <= n and threshold_refusal(n, t, threat_model) is None:
            return t
    return None


def honest_threshold(n: int, threat_model: str) -> int:
    """An honest-majority threshold n // 2 + 1 if accepted, else the nearest accepted one."""
    preferred = n // 2 + 1
    t = accepted_threshold(n, threat_model, [*range(preferred, n + 1), *range(preferred - 1, 1, -1)])
    if t is None:
        raise ValueError(f"no threshold is accepted for {n} clients under {threat_model}")
    return t


# --- inputs and sums ---------------------------------------------------------------------------


def random_inputs(params: ProtocolParams, seed: int = 0) -> dict[int, np.ndarray]:
    """Known ring inputs, uniform over the ring (test data, not secrets: numpy's generator)."""
    rng = np.random.default_rng(seed)
    dtype = np.uint32 if params.modulus_bits == 32 else np.uint64
    top = np.iinfo(dtype).max
    return {u: rng.integers(0, top, params.dim, dtype=dtype, endpoint=True) for u in params.client_ids}


def plain_sum(inputs: Mapping[int, np.ndarray], ids: Iterable[int]) -> np.ndarray:
    """sum of ``inputs[u]`` over ``ids`` in the ring (numpy's unsigned add wraps mod 2^k)."""
    ids = list(ids)
    total = np.zeros_like(next(iter(inputs.values())))
    for u in ids:
        total += inputs[u]
    return total


def max_ring_error(a: np.ndarray, b: np.ndarray) -> int:
    """max over coordinates of |signed(a - b)| in the ring: 0 iff a == b."""
    diff = (a - b).view(np.int32 if a.dtype == np.uint32 else np.int64).astype(object)
    return int(max((abs(int(v)) for v in diff), default=0))


# --- wire helpers (secagg.messages layouts) ------------------------------------------------------


def request(params: ProtocolParams, stage: str, receiver: int, body: bytes) -> bytes:
    """A server request of this round with a well-formed header."""
    return wire.pack_message(stage, wire.REQUEST, params.session, params.round_idx, wire.SERVER_ID, receiver, body)


def body_of(message: bytes) -> bytes:
    """The body of a message (after the 52-byte header)."""
    return bytes(message[wire.HEADER.size :])


def masked_vector(params: ProtocolParams, reply: bytes) -> np.ndarray:
    """The masked input y_u at the front of a MaskedInputCollection reply (what follows it,
    e.g. accusations, is left out), as a native-endian ring array."""
    size = params.dim * params.word_bytes
    data = body_of(reply)[:size]
    return np.frombuffer(data, dtype=f"<u{params.word_bytes}").astype(f"u{params.word_bytes}")


def rebody(message: bytes, body: bytes) -> bytes:
    """``message`` with its body replaced (and the header's length field updated)."""
    return bytes(message[:_LENGTH_FIELD]) + struct.pack(">I", len(body)) + body


def split_unmasking(message: bytes) -> tuple[tuple[int, ...], tuple[int, ...], bytes]:
    """(b ids, s^SK ids, the rest) of an Unmasking request; the rest is the signatures list
    under ConsistencyCheck, then whatever the protocol appends (the pairwise-key ids)."""
    data = body_of(message)
    b_count, sk_count = wire.TWO_COUNTS.unpack_from(data)
    ids = struct.unpack_from(f">{b_count + sk_count}Q", data, wire.TWO_COUNTS.size)
    return ids[:b_count], ids[b_count:], data[wire.TWO_COUNTS.size + 8 * len(ids) :]


def split_tail(rest: bytes, consistency_check: bool) -> tuple[bytes, bytes]:
    """(the signatures list, or b"" without ConsistencyCheck; what follows it) of the rest
    of an Unmasking request (:func:`split_unmasking`)."""
    if not consistency_check:
        return b"", bytes(rest)
    (count,) = struct.unpack_from(">I", rest)
    end = 4 + count * wire.SIGNED_ID.size
    return bytes(rest[:end]), bytes(rest[end:])


def pairwise_key_ids(ids: Iterable[int]) -> bytes:
    """The request's pairwise-key list naming ``ids``."""
    return wire.pack_list(wire.ID, [(v,) for v in ids])


def revealed_pairwise_keys(reply: bytes) -> dict[int, bytes]:
    """peer -> pairwise mask key s_uv, from the list after the shares of an Unmasking reply."""
    data = body_of(reply)
    (count,) = struct.unpack_from(">I", data)
    offset = 4 + count * wire.REVEALED_SHARE.size
    layout = wire.PAIRWISE_KEY
    if len(data) < offset + 4:
        return {}
    (keys,) = struct.unpack_from(">I", data, offset)
    return dict(layout.unpack_from(data, offset + 4 + i * layout.size) for i in range(keys))


def unmasking_body(b_ids: Iterable[int], sk_ids: Iterable[int], rest: bytes = b"", *, counts: tuple[int, int] | None = None) -> bytes:
    """An Unmasking request body; ``counts`` overrides the two announced counts."""
    b_ids, sk_ids = tuple(b_ids), tuple(sk_ids)
    announced = counts if counts is not None else (len(b_ids), len(sk_ids))
    return wire.TWO_COUNTS.pack(*announced) + b"".join(wire.ID.pack(v) for v in b_ids + sk_ids) + rest


def revealed_shares(reply: bytes) -> list[tuple[int, int, bytes]]:
    """(peer, kind, share) of each share an Unmasking reply reveals (kind: KIND_B or KIND_SK)."""
    data = body_of(reply)
    (count,) = struct.unpack_from(">I", data)
    size = wire.REVEALED_SHARE.size
    return [wire.REVEALED_SHARE.unpack_from(data, 4 + i * size) for i in range(count)]


def recover_secret(params: ProtocolParams, shares: Mapping[int, bytes]) -> bytes | None:
    """Lagrange interpolation at 0 from the first t shares (by holder id), as the server
    would: the 32-byte secret, or None with fewer than t shares or limbs that encode none.
    The caller checks the result (commitment, public key)."""
    holders = sorted(shares)[: params.threshold]
    if len(holders) < params.threshold:
        return None
    try:
        stacked = shares_from_bytes(b"".join(bytes(shares[h]) for h in holders))
        limbs = reconstruct(stacked, lagrange_at_zero(evaluation_points(params.client_ids, holders)))
        return join_limbs(limbs)
    except ValueError:
        return None


def unmask(params: ProtocolParams, masked: np.ndarray, owner: int, b_seed: bytes, pairwise: Mapping[int, bytes]) -> np.ndarray:
    """x_u from y_u = x_u + PRG(b_u) + sum_v delta_uv PRG(s_uv): remove the self mask and the
    pairwise mask with each peer v of ``pairwise`` (v -> its AES key with u)."""
    ctx = {"session": params.session, "round_idx": params.round_idx}
    streams = [(-1, self_mask_key(b_seed, owner=owner, **ctx))]
    streams += [(-pairwise_mask_sign(owner, v), key) for v, key in sorted(pairwise.items())]
    return add_masks_(masked.copy(), streams)


def rejections(server: ServerRound) -> list[tuple[int, str, str, str]]:
    """The server's rejections as plain (sender, stage, reason, verdict) tuples."""
    return [tuple(rejection) for rejection in server.rejections]


def reason_of(error: ProtocolError) -> str:
    """A refusal's reason without the "client N refuses: " prefix."""
    reason = str(error.reason)
    head, sep, tail = reason.partition(" refuses: ")
    return tail if sep and head.startswith("client ") else reason


def refusal_summary(refusals: Mapping[int, ProtocolError], limit: int = 2) -> str:
    """The first ``limit`` refusals as "client u: reason; ...", or "none"."""
    items = sorted(refusals.items())
    if not items:
        return "none"
    shown = "; ".join(f"client {u}: {short(reason_of(e), 80)}" for u, e in items[:limit])
    return shown + (f"; +{len(items) - limit} more" if len(items) > limit else "")


def short(text: object, limit: int = 110) -> str:
    """One line of at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- the round ------------------------------------------------------------------------------------


class ForgeryRefused(FedsimError, RuntimeError):
    """A forged message was refused for its layout, not by a defence: the scenario is out
    of step with the wire format (its verdict would mean nothing)."""


_LAYOUT_FAILURES = ("body ends", "unexpected trailing bytes", "body too short", "length field says")


class MemoryRound:
    """One round of the real protocol in this process, driven stage by stage.

    ``classes``: a ``ClientRound`` subclass per client id that should misbehave (built
    with the same arguments as an honest client). ``pki``: the active model's identities
    (made fresh when None under ``active``). ``inputs``: each client's ring input
    (default :func:`random_inputs`). The server keeps its transcript.

    ``refusals``: client id -> the ProtocolError with which it left the round;
    ``requests`` / ``replies``: stage -> what was sent and received (the server's view).
    """

    def __init__(
        self,
        params: ProtocolParams,
        *,
        classes: Mapping[int, type[ClientRound]] | None = None,
        pki: ClientPKI | None = None,
        inputs: Mapping[int, np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        self.params = params
        self.graph: NeighbourGraph = graph_for(params)
        if params.active and pki is None:
            pki = local_pki(params.client_ids)
        self.pki = pki
        verify = dict(pki.verify_keys) if pki is not None else None
        self.server = ServerRound(params, verify_keys=verify, keep_transcript=True, graph=self.graph)
        self.clients: dict[int, ClientRound] = {}
        for u in params.client_ids:
            cls = (classes or {}).get(u, ClientRound)
            kwargs = {"graph": self.graph}
            if pki is not None:
                kwargs.update(signing_key=pki.identities[u], verify_keys=verify)
            self.clients[u] = cls(params, u, **kwargs)
        self.inputs = dict(inputs) if inputs is not None else random_inputs(params, seed)
        for u, client in self.clients.items():
            client.set_input(self.inputs[u])
        self.refusals: dict[int, ProtocolError] = {}
        self.requests: dict[str, dict[int, bytes]] = {}
        self.replies: dict[str, dict[int, bytes]] = {}
        self.messages: dict[int, bytes] = self.server.start()

    @property
    def stage(self) -> str:
        """The server's current stage."""
        return self.server.stage

    def answer(self, messages: Mapping[int, bytes], skip: Iterable[int] = ()) -> dict[int, bytes]:
        """Each client's reply to its message (clients in ``skip``, or refusing, give none)."""
        skip = set(skip)
        replies = {}
        for u, message in sorted(messages.items()):
            if u in skip or u in self.refusals:
                continue
            try:
                replies[u] = self.clients[u].handle(message)
            except ProtocolError as error:
                self.refusals[u] = error
        return replies

    def advance(self, replies: Mapping[int, bytes] | None = None, skip: Iterable[int] = ()) -> dict[int, bytes]:
        """One stage: the pending requests answered (or ``replies`` as given) and handed to
        the server; returns (and keeps) the next requests."""
        stage = self.server.stage
        self.requests[stage] = dict(self.messages)
        if replies is None:
            replies = self.answer(self.messages, skip)
        self.replies[stage] = dict(replies)
        self.messages = self.server.step(replies)
        return self.messages

    def run_to(self, stage: str, drops: Mapping[str, Iterable[int]] | None = None) -> dict[int, bytes]:
        """Advance until the server is at ``stage`` (or done); ``drops``: stage -> clients
        that stop answering from that stage on."""
        gone: set[int] = set()
        drops = drops or {}
        while self.server.stage != stage and not self.server.done:
            gone |= set(drops.get(self.server.stage, ()))
            self.advance(skip=gone)
        return self.messages

    def finish(self, drops: Mapping[str, Iterable[int]] | None = None) -> ServerRound:
        """Run the round to its end; the server."""
        self.run_to(stages.DONE, drops)
        return self.server

    def check_forgeries(self) -> None:
        """Raise :class:`ForgeryRefused` if a client refused a message for its layout."""
        for u, error in sorted(self.refusals.items()):
            if any(failure in str(error.reason) for failure in _LAYOUT_FAILURES):
                raise ForgeryRefused(f"client {u} refused a forged message for its layout: {error.reason}")

    def adverts(self) -> dict[int, tuple[bytes, bytes]]:
        """(c^PK, s^PK) each client advertised, from the server's view."""
        out = {}
        for u, reply in self.replies.get(stages.ADVERTISE_KEYS, {}).items():
            data = body_of(reply)
            out[u] = (data[:32], data[32:64])
        return out

    def exact(self) -> bool:
        """Whether the round completed with exactly the ring sum of its survivors' inputs."""
        server = self.server
        if server.aborted or server.result is None or not server.survivors:
            return False
        return bool(np.array_equal(server.result, plain_sum(self.inputs, server.survivors)))


def garbage_share() -> bytes:
    """A syntactically valid share (LIMBS field elements < p) carrying nothing."""
    return bytes(SHARE_BYTES)
