"""Secure summation of client updates over torch.distributed, built on :mod:`secagg`.

Rank 0 is the server and ranks 1..W-1 are the clients (client id = rank).  One call
of :func:`client_secure_sum` on every client and :func:`server_secure_sum` on the
server runs one round of the protocol of Bonawitz et al., CCS 2017, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning", Fig. 4, so far without
dropouts (every client takes part; ShareKeys, ConsistencyCheck and the
reconstruction of dropped clients' masks come with dropout recovery):

- AdvertiseKeys: each client makes a fresh X25519 key pair for this round and sends
  (client id, dim, public key) to the server, which checks the messages and
  broadcasts the roster of (client id, public key) back (or an abort notice);
- MaskedInputCollection: each client encodes its float update into Z_(2^32)
  (while the server relays the keys), derives one key per peer and sends its
  masked vector y_u to the server;
- Unmasking: the server adds the y_u mod 2^32 (the pairwise masks cancel) and
  decodes the sum.

All calls are collective over ``group`` (all W ranks; gloo on CPU; ``None`` is the
default group).  Messages are fixed-layout byte or int32 tensors, never pickles.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg import (
    PUBLIC_KEY_BYTES,
    FixedPointCodec,
    check_ring,
    generate_private_key,
    mask_input_,
    pairwise_mask_key,
    public_key_bytes,
    unmask_sum,
)

__all__ = [
    "ADVERTISE_KEYS",
    "ENCODE",
    "MASKED_INPUT_COLLECTION",
    "SERVER_RANK",
    "SESSION_BYTES",
    "UNMASKING",
    "SecureSumConfig",
    "TranscriptEntry",
    "client_secure_sum",
    "server_secure_sum",
]

_LOG = logging.getLogger(__name__)

SERVER_RANK: int = 0
"""Global rank of the server."""

ADVERTISE_KEYS = "AdvertiseKeys"
ENCODE = "Encode"  # local step of the client, logged on its own
MASKED_INPUT_COLLECTION = "MaskedInputCollection"
UNMASKING = "Unmasking"

SESSION_BYTES: int = 16
"""Length of the run id chosen by the server (128 bits)."""

# AdvertiseKeys message: client id, vector length, raw X25519 public key.
_ADVERT = struct.Struct(">QQ32s")
# Roster header, then one _ADVERT per client: status, reason (ASCII, zero padded).
_HEADER = struct.Struct(">Q40s")
_MASKED_INPUT_TAG = 0x5EC  # point-to-point tag of MaskedInputCollection messages
_STATUS_OK = 0
_STATUS_ABORT = 1
assert _ADVERT.size == _HEADER.size == 48


@dataclass(frozen=True)
class SecureSumConfig:
    """Parameters of secure summation shared by the server and every client.

    ``clip_range``: each coordinate of an update is clipped to [-clip_range,
    clip_range] before encoding; ``modulus_bits``: the ring Z_(2^modulus_bits).
    """

    clip_range: float = 1.0
    modulus_bits: int = 32

    def __post_init__(self) -> None:
        check_ring(self.clip_range, self.modulus_bits)

    def codec(self, num_clients: int) -> FixedPointCodec:
        """The fixed-point code with headroom for the sum of ``num_clients`` updates."""
        return FixedPointCodec(self.clip_range, num_clients, self.modulus_bits)


@dataclass(frozen=True)
class TranscriptEntry:
    """One message the server received: the stage, the sender and what it sent."""

    stage: str
    client_id: int
    payload: bytes | torch.Tensor


@contextmanager
def _stage_timer(stage: str, role: str, round_idx: int) -> Iterator[None]:
    """Log (debug) the wall time of one protocol stage, with structured extras."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    _LOG.debug(
        "%s round %d %s: %.3f ms",
        role,
        round_idx,
        stage,
        1e3 * seconds,
        extra={"secagg_role": role, "secagg_stage": stage, "secagg_seconds": seconds},
    )


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")


def _check_common(round_idx: int, session: bytes, num_clients: int, config: object) -> None:
    _check_int("round_idx", round_idx, 0, 2**64 - 1)
    _check_int("num_clients", num_clients, 1)
    if not isinstance(session, (bytes, bytearray)) or len(session) != SESSION_BYTES:
        got = len(session) if isinstance(session, (bytes, bytearray)) else type(session).__name__
        raise ValueError(f"session must be {SESSION_BYTES} bytes, got {got}")
    if not isinstance(config, SecureSumConfig):
        raise ValueError(f"config must be a SecureSumConfig, got {type(config).__name__}")


def _client_ranks(num_clients: int, group: dist.ProcessGroup | None) -> list[int]:
    """Global ranks of the group in group-rank order; checks the world's shape."""
    ranks = dist.get_process_group_ranks(group if group is not None else dist.group.WORLD)
    if len(ranks) != num_clients + 1:
        raise ValueError(
            f"num_clients must equal the group size - 1 = {len(ranks) - 1}, got {num_clients}"
        )
    if SERVER_RANK not in ranks:
        raise ValueError(f"group must contain the server rank {SERVER_RANK}, got ranks {ranks}")
    return ranks


def _to_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _to_bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()


# --- AdvertiseKeys -------------------------------------------------------------------


def _send_advert(
    client_id: int, dim: int, public_key: bytes, num_clients: int, group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, dist.Work]:
    """Client side of AdvertiseKeys, first half: send (id, dim, s_u^PK) to the server
    and post the receive of the roster without waiting for it (see
    :func:`_receive_roster`), so the client can encode its input meanwhile."""
    message = _to_tensor(_ADVERT.pack(client_id, dim, public_key))
    dist.gather(message, None, dst=SERVER_RANK, group=group)
    roster_bytes = torch.empty((num_clients + 1) * _ADVERT.size, dtype=torch.uint8)
    pending = dist.broadcast(roster_bytes, src=SERVER_RANK, group=group, async_op=True)
    return roster_bytes, pending


def _receive_roster(
    roster_bytes: torch.Tensor,
    pending: dist.Work,
    client_id: int,
    public_key: bytes,
    num_clients: int,
) -> dict[int, bytes]:
    """Client side of AdvertiseKeys, second half: wait for the roster {id: s_v^PK} and
    check it (not aborted, carries this client's own key unchanged)."""
    pending.wait()
    status, reason, roster = _parse_roster(_to_bytes(roster_bytes), num_clients)
    if status != _STATUS_OK:
        raise RuntimeError(f"server aborted round at {ADVERTISE_KEYS}: {reason}")
    if roster.get(client_id) != public_key:
        raise RuntimeError(f"roster from the server does not carry client {client_id}'s key")
    return roster


def _parse_roster(data: bytes, num_clients: int) -> tuple[int, str, dict[int, bytes]]:
    status, reason = _HEADER.unpack_from(data, 0)
    roster: dict[int, bytes] = {}
    for i in range(1, num_clients + 1):
        client_id, _dim, key = _ADVERT.unpack_from(data, i * _ADVERT.size)
        roster[client_id] = key
    return status, reason.rstrip(b"\0").decode("ascii", "replace"), roster


def _check_adverts(
    adverts: list[tuple[int, int, bytes]], ranks: list[int], dim: int
) -> str | None:
    """Why the server must abort, or None: ids are the senders' ranks, dims agree."""
    keys = set()
    for (client_id, client_dim, key), rank in zip(adverts, ranks):
        if client_id != rank:
            return f"rank {rank} claimed client id {client_id}"
        if client_dim != dim:
            return f"client {rank} has dim {client_dim}, server {dim}"
        keys.add(key)
    if len(keys) != len(adverts):
        return "two clients advertised the same public key"
    return None


def _advertise_keys_server(
    dim: int,
    ranks: list[int],
    group: dist.ProcessGroup | None,
    transcript: list | None,
) -> dict[int, bytes]:
    """Server side: gather the adverts, check them, broadcast the roster or an abort."""
    size = _ADVERT.size
    own = torch.zeros(size, dtype=torch.uint8)
    received = torch.empty((len(ranks), size), dtype=torch.uint8)
    dist.gather(own, list(received.unbind(0)), dst=SERVER_RANK, group=group)
    client_slots = [i for i, rank in enumerate(ranks) if rank != SERVER_RANK]
    adverts = [_ADVERT.unpack(_to_bytes(received[i])) for i in client_slots]
    client_ranks = [ranks[i] for i in client_slots]
    if transcript is not None:
        transcript.extend(
            TranscriptEntry(ADVERTISE_KEYS, rank, key)
            for rank, (_cid, _dim, key) in zip(client_ranks, adverts)
        )
    problem = _check_adverts(adverts, client_ranks, dim)
    order = sorted(range(len(adverts)), key=lambda i: adverts[i][0])
    header = (
        _HEADER.pack(_STATUS_OK, b"")
        if problem is None
        else _HEADER.pack(_STATUS_ABORT, problem.encode("ascii", "replace")[:40])
    )
    roster_bytes = header + b"".join(_ADVERT.pack(*adverts[i]) for i in order)
    dist.broadcast(_to_tensor(roster_bytes), src=SERVER_RANK, group=group)
    if problem is not None:
        raise ValueError(f"{ADVERTISE_KEYS} failed, round aborted: {problem}")
    return {client_id: key for client_id, _dim, key in adverts}


# --- MaskedInputCollection -------------------------------------------------------------


def _masked_input_server(
    dim: int, ranks: list[int], group: dist.ProcessGroup | None, transcript: list | None
) -> list[torch.Tensor]:
    """Server side: receive every client's masked vector y_u (int32, length dim).

    Point-to-point receives posted for all clients at once, each straight into its
    own row (``dist.gather`` on gloo would stage all rows in one more flat buffer).
    """
    clients = [rank for rank in ranks if rank != SERVER_RANK]
    received = torch.empty((len(clients), dim), dtype=torch.int32)
    pending = [
        dist.irecv(row, src=rank, group=group, tag=_MASKED_INPUT_TAG)
        for row, rank in zip(received.unbind(0), clients)
    ]
    for work in pending:
        work.wait()
    masked = list(received.unbind(0))
    if transcript is not None:
        transcript.extend(
            TranscriptEntry(MASKED_INPUT_COLLECTION, rank, y) for rank, y in zip(clients, masked)
        )
    return masked


def _peer_mask_keys(
    private_key: X25519PrivateKey,
    client_id: int,
    roster: dict[int, bytes],
    round_idx: int,
    session: bytes,
) -> dict[int, bytes]:
    """s_uv for every peer v in the roster (Bonawitz et al. 2017, Fig. 4, round 2)."""
    return {
        peer_id: pairwise_mask_key(
            private_key,
            peer_key,
            round_idx=round_idx,
            id_lo=min(client_id, peer_id),
            id_hi=max(client_id, peer_id),
            session=bytes(session),
        )
        for peer_id, peer_key in roster.items()
        if peer_id != client_id
    }


# --- public API ------------------------------------------------------------------------


def client_secure_sum(
    update: torch.Tensor,
    *,
    client_id: int,
    round_idx: int,
    session: bytes,
    num_clients: int,
    config: SecureSumConfig,
    generator: torch.Generator,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Contribute ``update`` (flat float tensor) to this round's secure sum.

    Collective with :func:`server_secure_sum` on rank 0 and this call on every other
    rank.  The update leaves the process only masked.  ``generator`` draws the
    stochastic-rounding coins; masks come from fresh X25519 keys and AES-CTR.
    """
    _check_common(round_idx, session, num_clients, config)
    if not isinstance(update, torch.Tensor) or not update.is_floating_point():
        got = update.dtype if isinstance(update, torch.Tensor) else type(update).__name__
        raise ValueError(f"update must be a floating-point torch.Tensor, got {got}")
    if update.dim() != 1 or update.numel() == 0:
        raise ValueError(f"update must be flat and non-empty, got shape {tuple(update.shape)}")
    ranks = _client_ranks(num_clients, group)
    if client_id == SERVER_RANK or client_id not in ranks:
        clients = [rank for rank in ranks if rank != SERVER_RANK]
        raise ValueError(f"client_id must be a client rank in {clients}, got {client_id}")
    codec = config.codec(num_clients)
    update = update.detach().to(device="cpu", dtype=torch.float32)
    role = f"client {client_id}"

    with _stage_timer(ADVERTISE_KEYS, role, round_idx):
        private_key = generate_private_key()
        public_key = public_key_bytes(private_key)
        roster_bytes, pending = _send_advert(
            client_id, update.numel(), public_key, num_clients, group
        )
    with _stage_timer(ENCODE, role, round_idx):  # local: overlaps the server's relay
        encoded = codec.encode(update, generator)
    with _stage_timer(ADVERTISE_KEYS, role, round_idx):
        roster = _receive_roster(roster_bytes, pending, client_id, public_key, num_clients)
    with _stage_timer(MASKED_INPUT_COLLECTION, role, round_idx):
        peer_keys = _peer_mask_keys(private_key, client_id, roster, round_idx, session)
        masked = mask_input_(encoded, client_id, peer_keys)  # in place: x_u becomes y_u
        dist.send(masked, dst=SERVER_RANK, group=group, tag=_MASKED_INPUT_TAG)


def server_secure_sum(
    *,
    dim: int,
    round_idx: int,
    session: bytes,
    num_clients: int,
    config: SecureSumConfig,
    group: dist.ProcessGroup | None = None,
    transcript: list | None = None,
) -> torch.Tensor:
    """Run the server's side of one round; return the float32 sum of the updates.

    The result is ``decode(sum_u enc(update_u) mod 2^32)``: exact sum of the codes,
    so it differs from the float sum only by clipping and rounding.  If
    ``transcript`` is a list, every received message is appended to it as a
    :class:`TranscriptEntry` (the server's whole view of the round).
    """
    _check_common(round_idx, session, num_clients, config)
    _check_int("dim", dim, 1)
    if transcript is not None and not isinstance(transcript, list):
        raise ValueError(f"transcript must be a list or None, got {type(transcript).__name__}")
    ranks = _client_ranks(num_clients, group)
    if dist.get_rank() != SERVER_RANK:
        raise ValueError(f"server_secure_sum must run on rank {SERVER_RANK}, got {dist.get_rank()}")
    codec = config.codec(num_clients)
    role = "server"

    with _stage_timer(ADVERTISE_KEYS, role, round_idx):
        _advertise_keys_server(dim, ranks, group, transcript)
    with _stage_timer(MASKED_INPUT_COLLECTION, role, round_idx):
        masked = _masked_input_server(dim, ranks, group, transcript)
    with _stage_timer(UNMASKING, role, round_idx):
        total = codec.decode_sum(unmask_sum(masked))
    return total
