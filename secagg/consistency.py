"""Ed25519 signatures for the optional ConsistencyCheck (Bonawitz et al., CCS 2017, Fig. 4,
Round 0 with signed keys and Round 3, ConsistencyCheck).

In the active-adversary variant each client signs its advertised public keys, and
after MaskedInputCollection signs the survivor set U3 the server announced; in
Unmasking it checks its peers' signatures on the same U3 before revealing shares.
A server that tells two groups of clients different survivor sets (to learn both
secrets of one peer from different clients) is caught when the two stories cannot both
gather t honest signatures in a neighbourhood, i.e. when t > (s + c) / 2 for
neighbourhoods of s clients with c colluders (Sec. 6), which the active threat model
enforces.  Without a PKI (``verify_keys`` given to the client) the verify keys are
advertised in the round itself, which only protects against a server that does not
also substitute keys; the active threat model requires the PKI.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SIGNATURE_BYTES",
    "VERIFY_KEY_BYTES",
    "advert_payload",
    "advert_problem",
    "sign",
    "survivors_payload",
    "verify",
    "verify_key_bytes",
]

SIGNATURE_BYTES: int = 64
VERIFY_KEY_BYTES: int = 32
_ADVERT_LABEL = b"secagg/v1/advertise-keys"
_SURVIVORS_LABEL = b"secagg/v1/consistency-check"


def advert_payload(*, session: bytes, round_idx: int, client_id: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """What a client signs in AdvertiseKeys: label | session | round | id | c^PK | s^PK."""
    return _ADVERT_LABEL + bytes(session) + struct.pack(">QQ", round_idx, client_id) + c_pk + s_pk


def survivors_payload(*, session: bytes, round_idx: int, survivors: Sequence[int]) -> bytes:
    """What a client signs in ConsistencyCheck: label | session | round | |U3| | U3 (sorted)."""
    ids = sorted(survivors)
    return _SURVIVORS_LABEL + bytes(session) + struct.pack(f">QI{len(ids)}Q", round_idx, len(ids), *ids)


def verify_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte verify key of ``key``."""
    return key.public_key().public_bytes_raw()


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Ed25519 signature (64 bytes)."""
    return key.sign(payload)


def verify(verify_key: bytes, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``payload`` under ``verify_key``."""
    try:
        Ed25519PublicKey.from_public_bytes(bytes(verify_key)).verify(bytes(signature), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def advert_problem(
    session: bytes, round_idx: int, client_id: int, advert: Sequence[bytes], pki: Mapping[int, bytes] | None
) -> str | None:
    """Why a signed advert (c^PK, s^PK, verify key, signature) of Fig. 4, Round 0 must be
    rejected, or None: with a PKI, the client has no entry there or its verify key differs
    from the PKI's; in any case, the signature does not verify."""
    c_pk, s_pk, verify_key, signature = advert
    if pki is not None:
        if client_id not in pki:
            return f"client {client_id} has no verify key in the PKI"
        if pki[client_id] != verify_key:
            return f"verify key of client {client_id} differs from the PKI's"
    payload = advert_payload(session=session, round_idx=round_idx, client_id=client_id, c_pk=c_pk, s_pk=s_pk)
    if not verify(verify_key, signature, payload):
        return f"signature of client {client_id} on its keys is invalid"
    return None
