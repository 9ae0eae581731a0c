"""Wire format of the protocol: fixed binary layouts, never pickles.

Every message is a 52-byte header followed by a stage-specific body:

    magic "SAGG" | version u8 | stage u8 | direction u8 | reserved u8 (0) |
    session 16 bytes | round u64 | sender u64 | receiver u64 | body length u32

(big-endian; the server is party 0, clients are their ids >= 1).  The header binds a
message to one run, round, stage, direction and pair of parties, so a message
replayed from another round or stage, sent to the wrong party, or cut short is
rejected with a :class:`ProtocolError` naming the sender, the stage and the reason.
Bodies are read with :class:`Reader`, which checks every length against the bytes
actually present and rejects trailing bytes.  Ring vectors travel as little-endian
words.

Version 2 (robustness to malicious clients) added the key checks of the ShareKeys
reply and the accusations of the MaskedInputCollection reply.  The server records what
it refused as :class:`Rejection` (sender, stage, reason, verdict).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from secagg.agreement import PUBLIC_KEY_BYTES
from secagg.channel import CIPHERTEXT_BYTES, KEY_CHECK_BYTES, SHARE_KEY_BYTES
from secagg.consistency import SIGNATURE_BYTES, VERIFY_KEY_BYTES
from secagg.shamir import SHARE_BYTES
from secagg.stages import (
    STAGES,
)

__all__ = [
    "ACCUSATION",
    "ACCUSATION_KEYED",
    "ADVERT",
    "ADVERT_SIGNED",
    "CIPHERTEXT_ENTRY",
    "COMMITMENT",
    "DIGEST",
    "HEADER",
    "ID",
    "KEY_CHECKS",
    "KIND_B",
    "KIND_SK",
    "MAGIC",
    "MALICIOUS",
    "PAIRWISE_KEY",
    "REJECTED",
    "REPLY",
    "REQUEST",
    "REVEALED_SHARE",
    "ROSTER_ENTRY",
    "ROSTER_ENTRY_SIGNED",
    "SERVER_ID",
    "SIGNATURE",
    "SIGNED_ID",
    "TWO_COUNTS",
    "VERDICTS",
    "VERSION",
    "Endpoint",
    "ProtocolError",
    "Reader",
    "Rejection",
    "accusation_layout",
    "open_message",
    "pack_list",
    "pack_message",
    "pack_records",
]

_STAGE_CODE = {name: code for code, name in enumerate(STAGES, start=1)}
_STAGE_NAME = {code: name for name, code in _STAGE_CODE.items()}

MAGIC: bytes = b"SAGG"
VERSION: int = 2
SERVER_ID: int = 0
REQUEST: int = 1
"""Direction of a server -> client message."""
REPLY: int = 2
"""Direction of a client -> server message."""

HEADER = struct.Struct(">4sBBBB16sQQQI")
_COUNT = struct.Struct(">I")

# Body records (Bonawitz et al. 2017, Fig. 4), by stage:
DIGEST = struct.Struct(">32s")
"""AdvertiseKeys request: SHA-256 digest of the round's ProtocolParams."""
ADVERT = struct.Struct(f">{PUBLIC_KEY_BYTES}s{PUBLIC_KEY_BYTES}s")
"""AdvertiseKeys reply: c^PK, s^PK."""
ADVERT_SIGNED = struct.Struct(f">{PUBLIC_KEY_BYTES}s{PUBLIC_KEY_BYTES}s{VERIFY_KEY_BYTES}s{SIGNATURE_BYTES}s")
"""AdvertiseKeys reply with ConsistencyCheck: c^PK, s^PK, Ed25519 verify key, signature."""
ROSTER_ENTRY = struct.Struct(">Q" + ADVERT.format[1:])
"""ShareKeys request: counted list of (id, c^PK, s^PK) for the neighbourhood."""
ROSTER_ENTRY_SIGNED = struct.Struct(">Q" + ADVERT_SIGNED.format[1:])
"""ShareKeys request with ConsistencyCheck: counted list of (id, c^PK, s^PK, vk, sig)."""
COMMITMENT = struct.Struct(">32s")
"""ShareKeys reply, first field: the commitment to b_u; then a counted list of
CIPHERTEXT_ENTRY, then a counted list of KEY_CHECKS (same receivers, same order)."""
CIPHERTEXT_ENTRY = struct.Struct(f">Q{CIPHERTEXT_BYTES}s")
"""ShareKeys reply (receiver, ciphertext) and MaskedInputCollection request (sender, ciphertext)."""
KEY_CHECKS = struct.Struct(f">{KEY_CHECK_BYTES}s{KEY_CHECK_BYTES}s")
"""ShareKeys reply, per receiver v of u: the pair's key checks in id order, (check of the
key lo -> hi, check of the key hi -> lo) with lo = min(u, v), hi = max(u, v)
(:func:`secagg.channel.key_check`): two honest parties send the same record, which the
server compares before relaying."""
ACCUSATION_KEYED = struct.Struct(f">Q{SHARE_KEY_BYTES}s")
"""MaskedInputCollection reply after the masked vector, semi-honest mode: counted list of
(sender whose shares could not be opened or parsed, AES-GCM key of that sender -> this client)."""
ACCUSATION = struct.Struct(">Q")
"""MaskedInputCollection reply after the masked vector, active mode: counted list of senders
whose shares could not be opened or parsed (no key: the server may be malicious)."""
ID = struct.Struct(">Q")
"""ConsistencyCheck request: counted list of survivor ids.  Unmasking request: ids."""
SIGNATURE = struct.Struct(f">{SIGNATURE_BYTES}s")
"""ConsistencyCheck reply: signature on the survivor set."""
SIGNED_ID = struct.Struct(f">Q{SIGNATURE_BYTES}s")
"""Unmasking request with ConsistencyCheck: counted list of (signer, signature)."""
TWO_COUNTS = struct.Struct(">II")
"""Unmasking request: how many survivor ids, then dropped ids, follow (then, under the
ConsistencyCheck, a counted list of SIGNED_ID; last, a counted list of ID: the peers whose
pairwise mask keys are asked for)."""
REVEALED_SHARE = struct.Struct(f">QB{SHARE_BYTES}s")
"""Unmasking reply: counted list of (peer, kind, share); then a counted list of PAIRWISE_KEY."""
PAIRWISE_KEY = struct.Struct(f">Q{SHARE_KEY_BYTES}s")
"""Unmasking reply: (dropped or excluded peer v, the pairwise mask key s_uv), for the peers
named in the request's last list (a counted list of ID after the ids and signatures)."""
KIND_B = 1
"""A share of the self-mask seed b_v of a survivor v."""
KIND_SK = 2
"""A share of the mask secret key s_v^SK of a dropped v."""


REJECTED: str = "rejected"
"""Verdict: the message was refused (malformed, late, wrong stage, unverifiable)."""
MALICIOUS: str = "malicious"
"""Verdict: the server holds proof that the sender deviated from the protocol."""
VERDICTS: tuple[str, ...] = (REJECTED, MALICIOUS)


class Rejection(NamedTuple):
    """One entry of ``ServerRound.rejections``: what the server refused, from whom, and why.

    ``sender``: the client (as the transport attributed the message; any object for
    messages from outside the cohort); ``stage``: the protocol stage the verdict is
    about; ``reason``: why, naming the other party where one is involved;
    ``verdict``: :data:`REJECTED` or :data:`MALICIOUS` (never against an honest client:
    see :mod:`secagg.server`).
    """

    sender: int
    stage: str
    reason: str
    verdict: str = REJECTED


def accusation_layout(active: bool) -> struct.Struct:
    """The accusation record of the MaskedInputCollection reply: with the revealed channel
    key (semi-honest) or without (active)."""
    return ACCUSATION if active else ACCUSATION_KEYED


def _party(party: int) -> str:
    return "server" if party == SERVER_ID else f"client {party}"


class ProtocolError(Exception):
    """A message was rejected or a request refused.

    ``sender``: the party whose message is rejected (0 = the server); ``stage``: the
    protocol stage; ``reason``: why.  ``receiver``: the party that rejected it, when
    known.  ``str()`` names all of them.
    """

    def __init__(self, sender: int, stage: str, reason: str, receiver: int | None = None) -> None:
        self.sender = sender
        self.stage = stage
        self.reason = reason
        self.receiver = receiver
        by = "" if receiver is None else f" by {_party(receiver)}"
        super().__init__(f"{stage} message from {_party(sender)} rejected{by}: {reason}")


def pack_message(
    stage: str, direction: int, session: bytes, round_idx: int, sender: int, receiver: int, body: bytes
) -> bytes:
    """Header + body, one ``bytes``."""
    header = HEADER.pack(
        MAGIC, VERSION, _STAGE_CODE[stage], direction, 0, session, round_idx, sender, receiver, len(body)
    )
    return header + body


def open_message(
    data: object,
    *,
    stage: str,
    direction: int,
    session: bytes,
    round_idx: int,
    sender: int,
    receiver: int,
) -> memoryview:
    """Check the header of ``data`` against what the receiving party expects; return the body.

    ``sender`` is the party the transport attributes the message to; every mismatch is
    a :class:`ProtocolError` (sender, stage, reason) with ``receiver`` as the rejecter.
    """

    def fail(reason: str) -> ProtocolError:
        return ProtocolError(sender, stage, reason, receiver)

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise fail(f"message must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < HEADER.size:
        raise fail(f"message of {len(view)} bytes is shorter than the {HEADER.size}-byte header")
    (
        magic,
        version,
        code,
        got_direction,
        reserved,
        got_session,
        got_round,
        got_sender,
        got_receiver,
        length,
    ) = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise fail(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise fail(f"unsupported version {version}, expected {VERSION}")
    if got_direction != direction or reserved != 0:
        raise fail(f"wrong direction {got_direction} (reserved {reserved}), expected {direction}")
    if got_session != session:
        raise fail("wrong session id (a message of another run)")
    if got_round != round_idx:
        raise fail(f"wrong round {got_round}, expected {round_idx} (replayed or stale message)")
    if code != _STAGE_CODE[stage]:
        got = _STAGE_NAME.get(code, f"unknown stage code {code}")
        raise fail(f"wrong stage {got}, expected {stage} (replayed or out-of-order message)")
    if got_sender != sender:
        raise fail(f"sender field says {_party(got_sender)} (forged or misrouted)")
    if got_receiver != receiver:
        raise fail(f"receiver field says {_party(got_receiver)} (misrouted)")
    if length != len(view) - HEADER.size:
        raise fail(f"length field says {length} body bytes, message carries {len(view) - HEADER.size}")
    return view[HEADER.size :]


def pack_list(layout: struct.Struct, items: Iterable[Sequence[object]]) -> bytes:
    """u32 count followed by one ``layout`` record per item."""
    return pack_records([layout.pack(*item) for item in items])


def pack_records(records: Sequence[bytes]) -> bytes:
    """u32 count followed by the already packed ``records``."""
    return _COUNT.pack(len(records)) + b"".join(records)


class Reader:
    """Reads a body front to back; every short read or leftover byte is a ProtocolError."""

    def __init__(self, body: memoryview, *, sender: int, stage: str, receiver: int) -> None:
        self._body = body
        self._offset = 0
        self._context = (sender, stage)
        self._receiver = receiver

    def fail(self, reason: str) -> ProtocolError:
        """The ProtocolError for this message with ``reason``."""
        return ProtocolError(*self._context, reason, self._receiver)

    def take(self, layout: struct.Struct) -> tuple:
        """The next record of ``layout``."""
        if len(self._body) - self._offset < layout.size:
            raise self.fail(
                f"body ends {len(self._body)} bytes in, a {layout.size}-byte field at {self._offset}"
            )
        fields = layout.unpack_from(self._body, self._offset)
        self._offset += layout.size
        return fields

    def take_list(self, layout: struct.Struct, max_count: int) -> list[tuple]:
        """A u32 count (at most ``max_count``) and that many records of ``layout``."""
        (count,) = self.take(_COUNT)
        if count > max_count:
            raise self.fail(f"list of {count} records, at most {max_count} allowed")
        block = self.take_bytes(count * layout.size) if count else b""
        return list(layout.iter_unpack(block))

    def take_raw_list(self, layout: struct.Struct, max_count: int) -> tuple[int, memoryview]:
        """Like :meth:`take_list`, but the records unparsed: (count, zero-copy view of them)."""
        (count,) = self.take(_COUNT)
        if count > max_count:
            raise self.fail(f"list of {count} records, at most {max_count} allowed")
        return count, self.take_bytes(count * layout.size)

    def take_bytes(self, size: int) -> memoryview:
        """The next ``size`` bytes, as a zero-copy view."""
        if len(self._body) - self._offset < size:
            raise self.fail(f"body too short: {size} bytes wanted at {self._offset} of {len(self._body)}")
        out = self._body[self._offset : self._offset + size]
        self._offset += size
        return out

    def end(self) -> None:
        """Reject trailing bytes."""
        if self._offset != len(self._body):
            raise self.fail(f"{len(self._body) - self._offset} unexpected trailing bytes")


@dataclass(frozen=True)
class Endpoint:
    """One party's end of the wire in one round: packs what it sends, opens what it receives."""

    session: bytes
    round_idx: int
    party: int

    def pack(self, stage: str, direction: int, receiver: int, body: bytes | list) -> bytes:
        """A message from this party to ``receiver``.  ``body``: bytes-like, or a list of
        bytes-like parts (e.g. a numpy array), joined behind the header in one copy."""
        if not isinstance(body, list):
            return pack_message(stage, direction, self.session, self.round_idx, self.party, receiver, body)
        length = sum(memoryview(part).nbytes for part in body)
        header = HEADER.pack(
            MAGIC, VERSION, _STAGE_CODE[stage], direction, 0, self.session, self.round_idx, self.party, receiver, length
        )
        return b"".join([header, *body])

    def open(self, data: object, stage: str, direction: int, sender: int) -> Reader:
        """A Reader over the body of ``data`` from ``sender``, after :func:`open_message` checks."""
        body = open_message(
            data,
            stage=stage,
            direction=direction,
            session=self.session,
            round_idx=self.round_idx,
            sender=sender,
            receiver=self.party,
        )
        return Reader(body, sender=sender, stage=stage, receiver=self.party)
