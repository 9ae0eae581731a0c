"""Pairwise key agreement: X25519 Diffie-Hellman followed by HKDF-SHA256.

Bonawitz et al., CCS 2017, Sec. 3 (key agreement KA) and Fig. 4: in round 0
(AdvertiseKeys) each party u publishes s_u^PK; in round 2 (MaskedInputCollection)
parties u and v compute s_uv = KA.agree(s_u^SK, s_v^PK), which equals
KA.agree(s_v^SK, s_u^PK).  KA.agree is X25519 followed by a key derivation (the
paper's KA hashes the Diffie-Hellman output); here HKDF-SHA256 binds the key to a
protocol label, the session (run) id, the round and the two party ids in canonical
order, so a key is never reused across runs, rounds or pairs.

Every other key of the protocol is derived the same way, each under its own label:
the self-mask key from the seed b_u (Fig. 4, Round 2: PRG(b_u)) and the key that
encrypts the Shamir shares u sends v (Fig. 4, Round 1: c_uv = KA.agree(c_u^SK,
c_v^PK); one key per direction, since the info names sender then receiver).
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "MASK_KEY_BYTES",
    "MIN_SESSION_BYTES",
    "PAIRWISE_MASK_LABEL",
    "PUBLIC_KEY_BYTES",
    "SEED_COMMITMENT_LABEL",
    "SELF_MASK_LABEL",
    "SHARE_KEY_LABEL",
    "generate_private_key",
    "load_public_key",
    "mask_key_info",
    "pairwise_mask_key",
    "public_key_bytes",
    "seed_commitment",
    "self_mask_key",
    "share_encryption_keys",
]

PUBLIC_KEY_BYTES: int = 32
"""Length of a raw X25519 public key."""

MASK_KEY_BYTES: int = 32
"""Length of a derived pairwise mask key (an AES-256 key for :mod:`secagg.prg`)."""

MIN_SESSION_BYTES: int = 16
"""A session id carries at least 128 bits."""

PAIRWISE_MASK_LABEL: bytes = b"secagg/v1/pairwise-mask-key"
"""Domain-separation label of pairwise mask keys."""

SELF_MASK_LABEL: bytes = b"secagg/v1/self-mask-key"
"""Domain-separation label of the key expanded into the self mask PRG(b_u)."""

SEED_COMMITMENT_LABEL: bytes = b"secagg/v1/self-mask-seed-commitment"
"""Domain-separation label of the hash commitment to b_u."""

SHARE_KEY_LABEL: bytes = b"secagg/v1/share-encryption-key"
"""Domain-separation label of the AES-GCM keys that encrypt Shamir shares."""

_MAX_U64 = 2**64 - 1


def generate_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (from the OS CSPRNG); make one per party per round."""
    return X25519PrivateKey.generate()


def public_key_bytes(private_key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key s_u^PK that a party advertises."""
    if not isinstance(private_key, X25519PrivateKey):
        raise ValueError(f"private_key must be an X25519PrivateKey, got {type(private_key).__name__}")
    return private_key.public_key().public_bytes_raw()


def load_public_key(data: bytes) -> X25519PublicKey:
    """Parse a raw 32-byte X25519 public key, with a clear error on a bad length."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != PUBLIC_KEY_BYTES:
        got = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
        raise ValueError(f"public key must be {PUBLIC_KEY_BYTES} raw bytes, got {got}")
    return X25519PublicKey.from_public_bytes(bytes(data))


def _check_u64(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U64:
        raise ValueError(f"{name} must be an int in [0, 2^64 - 1], got {value!r}")


def _key_info(label: bytes, session: bytes, *fields: tuple[str, int]) -> bytes:
    """label | len(session) | session | fields as big-endian u64: injective in its inputs."""
    if not isinstance(session, (bytes, bytearray)) or len(session) < MIN_SESSION_BYTES:
        got = len(session) if isinstance(session, (bytes, bytearray)) else type(session).__name__
        raise ValueError(f"session must be bytes of length >= {MIN_SESSION_BYTES}, got {got}")
    for name, value in fields:
        _check_u64(name, value)
    values = [value for _name, value in fields]
    packed = struct.pack(f">{len(values)}Q", *values)
    return b"".join((label, struct.pack(">I", len(session)), bytes(session), packed))


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=MASK_KEY_BYTES, salt=None, info=info).derive(secret)


def mask_key_info(*, session: bytes, round_idx: int, id_lo: int, id_hi: int) -> bytes:
    """HKDF ``info`` for a pairwise mask key: label | len(session) | session | round | ids.

    Length-prefixed and fixed-width (big-endian u64) so that distinct tuples never
    encode to the same bytes.  Requires id_lo < id_hi (canonical order: both parties
    of a pair build the same ``info``) and a session of at least 128 bits.
    """
    info = _key_info(
        PAIRWISE_MASK_LABEL, session, ("round_idx", round_idx), ("id_lo", id_lo), ("id_hi", id_hi)
    )
    if id_lo >= id_hi:
        raise ValueError(f"id_lo must be < id_hi (canonical order), got id_lo={id_lo}, id_hi={id_hi}")
    return info


def _agree(own_private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 output, refusing a malformed, low-order or mirrored peer key."""
    if not isinstance(own_private, X25519PrivateKey):
        raise ValueError(f"own_private must be an X25519PrivateKey, got {type(own_private).__name__}")
    peer = load_public_key(peer_public)
    if peer.public_bytes_raw() == own_private.public_key().public_bytes_raw():
        raise ValueError("peer_public must differ from the party's own public key")
    try:
        return own_private.exchange(peer)
    except ValueError as exc:
        raise ValueError(f"peer_public is not a usable X25519 key: {exc}") from exc


def pairwise_mask_key(
    own_private: X25519PrivateKey,
    peer_public: bytes,
    *,
    round_idx: int,
    id_lo: int,
    id_hi: int,
    session: bytes,
) -> bytes:
    """s_uv = HKDF-SHA256(X25519(own_private, peer_public), info) as 32 bytes.

    Symmetric: parties u and v obtain the same key (Bonawitz et al. 2017, Sec. 3,
    KA correctness).  Raises ValueError on a malformed or low-order peer key (the
    X25519 output would be all zero).
    """
    info = mask_key_info(session=session, round_idx=round_idx, id_lo=id_lo, id_hi=id_hi)
    return _hkdf(_agree(own_private, peer_public), info)


def share_encryption_keys(
    own_private: X25519PrivateKey,
    peer_public: bytes,
    *,
    session: bytes,
    round_idx: int,
    own_id: int,
    peer_id: int,
) -> tuple[bytes, bytes]:
    """AES-256-GCM keys for the shares own -> peer and peer -> own (Fig. 4, Round 1).

    c_uv = X25519(c_u^SK, c_v^PK), computed once, then HKDF-SHA256 with info naming
    sender then receiver: the two directions of a pair get different keys, and each
    key encrypts one message.
    """
    shared = _agree(own_private, peer_public)

    def key(sender: int, receiver: int) -> bytes:
        info = _key_info(
            SHARE_KEY_LABEL, session, ("round_idx", round_idx), ("sender", sender), ("receiver", receiver)
        )
        return _hkdf(shared, info)

    return key(own_id, peer_id), key(peer_id, own_id)


def self_mask_key(seed: bytes, *, session: bytes, round_idx: int, owner: int) -> bytes:
    """The AES-256 key of the self mask PRG(b_u): HKDF-SHA256(b_u, label | session | round | u).

    ``seed`` is b_u, 32 bytes from the OS CSPRNG (Bonawitz et al. 2017, Fig. 4, Round 1).
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != MASK_KEY_BYTES:
        got = len(seed) if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ValueError(f"seed must be {MASK_KEY_BYTES} bytes, got {got}")
    info = _key_info(SELF_MASK_LABEL, session, ("round_idx", round_idx), ("owner", owner))
    return _hkdf(bytes(seed), info)


def seed_commitment(seed: bytes, *, session: bytes, round_idx: int, owner: int) -> bytes:
    """SHA-256(label | session | round | u | b_u): lets the server check a reconstructed b_u.

    Not in Bonawitz et al. 2017: sent with the ShareKeys reply so that corrupted or
    forged b-shares make the round abort instead of silently corrupting the sum (the
    advertised s^PK plays this role for s^SK).  b_u is 256 uniform bits, so the hash
    reveals nothing usable about it.
    """
    info = _key_info(SEED_COMMITMENT_LABEL, session, ("round_idx", round_idx), ("owner", owner))
    return hashlib.sha256(info + bytes(seed)).digest()
