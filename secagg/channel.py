"""Authenticated encryption of Shamir shares between two clients, relayed by the server.

Bonawitz et al., CCS 2017, Fig. 4, Round 1 (ShareKeys): u sends v the ciphertext
AE.enc(c_uv, u || v || b_u share || s_u^SK share) through the server, and v checks
that the plaintext names u and v (Round 2).  Here AE is AES-256-GCM under the
direction-specific key of :func:`secagg.agreement.share_encryption_key`; the
associated data binds the session, the round, the sender and the receiver, so a
ciphertext cannot be replayed into another run, round or pair, and a flipped bit
fails authentication.  Each key encrypts exactly one message, so a fixed nonce is safe.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.shamir import SHARE_BYTES

__all__ = ["CIPHERTEXT_BYTES", "SHARES_LABEL", "open_shares", "seal_shares", "shares_associated_data"]

SHARES_LABEL: bytes = b"secagg/v1/encrypted-shares"
_PLAINTEXT = struct.Struct(f">QQ{SHARE_BYTES}s{SHARE_BYTES}s")
_TAG_BYTES = 16
_NONCE = bytes(12)

CIPHERTEXT_BYTES: int = _PLAINTEXT.size + _TAG_BYTES
"""Bytes of one encrypted pair of shares (sender, receiver, b share, s^SK share, tag)."""


def shares_associated_data(*, session: bytes, round_idx: int, sender: int, receiver: int) -> bytes:
    """AES-GCM associated data: label | session | round | sender | receiver."""
    return SHARES_LABEL + bytes(session) + struct.pack(">QQQ", round_idx, sender, receiver)


def seal_shares(
    key: bytes, *, session: bytes, round_idx: int, sender: int, receiver: int, b_share: bytes, sk_share: bytes
) -> bytes:
    """Encrypt ``sender``'s shares (of b and of s^SK) for ``receiver``: CIPHERTEXT_BYTES bytes."""
    plaintext = _PLAINTEXT.pack(sender, receiver, b_share, sk_share)
    ad = shares_associated_data(session=session, round_idx=round_idx, sender=sender, receiver=receiver)
    return AESGCM(key).encrypt(_NONCE, plaintext, ad)


def open_shares(
    key: bytes, ciphertext: bytes, *, session: bytes, round_idx: int, sender: int, receiver: int
) -> tuple[bytes, bytes]:
    """Decrypt and check a ciphertext from ``sender`` to ``receiver``: (b share, s^SK share).

    Raises ValueError if authentication fails (tampered, truncated, replayed from
    another session/round/pair, or encrypted under another key) or the plaintext
    names other parties (Bonawitz et al. 2017, Fig. 4, Round 2).
    """
    ad = shares_associated_data(session=session, round_idx=round_idx, sender=sender, receiver=receiver)
    try:
        plaintext = AESGCM(key).decrypt(_NONCE, bytes(ciphertext), ad)
    except InvalidTag:
        raise ValueError("authentication failed (tampered, replayed or misrouted ciphertext)") from None
    got_sender, got_receiver, b_share, sk_share = _PLAINTEXT.unpack(plaintext)
    if (got_sender, got_receiver) != (sender, receiver):
        raise ValueError(f"plaintext names sender {got_sender} and receiver {got_receiver}")
    return b_share, sk_share
