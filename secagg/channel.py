"""Authenticated encryption of Shamir shares between two clients, relayed by the server.

Bonawitz et al., CCS 2017, Fig. 4, Round 1 (ShareKeys): u sends v the ciphertext
AE.enc(c_uv, u || v || b_u share || s_u^SK share) through the server, and v checks
that the plaintext names u and v (Round 2).  Here AE is AES-256-GCM under the
direction-specific key of :func:`secagg.agreement.share_encryption_key`; the
associated data binds the session, the round, the sender and the receiver, so a
ciphertext cannot be replayed into another run, round or pair, and a flipped bit
fails authentication.  Each key encrypts exactly one message, so a fixed nonce is safe.

Key checks (not in the paper; robustness to malicious clients): with its ShareKeys
reply each client sends, for every peer, 128-bit hashes (:func:`key_check`) of the
pair's two keys as it computed them, in id order.  Two honest parties compute the same
keys and so send the same record; the server relays a pair's ciphertexts only when the
two records agree (else one of them deviated, and the pair does not exchange shares).  When
an honest receiver later cannot open a ciphertext and reveals its receive key (the
single-use key of that one ciphertext, addressed to it), the server verifies the
revealed key against the check both parties agreed on before it judges: a key that
matches and fails proves the sender at fault; a key that matches and opens proves a
false accusation; a key that does not match proves the accuser lied about its key.
:func:`open_shares` also checks that the plaintext's two shares are field elements,
so the receiver and the server reach the same decision on the same bytes.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.shamir import PRIME, SHARE_BYTES

__all__ = [
    "CIPHERTEXT_BYTES",
    "KEY_CHECK_BYTES",
    "KEY_CHECK_LABEL",
    "SHARES_LABEL",
    "SHARE_KEY_BYTES",
    "key_check",
    "open_shares",
    "seal_shares",
    "shares_associated_data",
]

SHARES_LABEL: bytes = b"secagg/v1/encrypted-shares"
KEY_CHECK_LABEL: bytes = b"sagg-kc1"
"""BLAKE2s personalisation (8 bytes) of :func:`key_check`."""
SHARE_KEY_BYTES: int = 32
"""Bytes of an AES-256-GCM share-encryption key."""
KEY_CHECK_BYTES: int = 16
"""Bytes of a key check: 128 bits of SHA-256 (second-preimage resistance is what matters:
an honest party's check is fixed before the other party chooses anything)."""
_PLAINTEXT = struct.Struct(f">QQ{SHARE_BYTES}s{SHARE_BYTES}s")
_LIMB_WORDS = struct.Struct(f"<{2 * SHARE_BYTES // 4}I")  # both shares as u32 limbs
_TAG_BYTES = 16
_NONCE = bytes(12)

CIPHERTEXT_BYTES: int = _PLAINTEXT.size + _TAG_BYTES
"""Bytes of one encrypted pair of shares (sender, receiver, b share, s^SK share, tag)."""


def shares_associated_data(*, session: bytes, round_idx: int, sender: int, receiver: int) -> bytes:
    """AES-GCM associated data: label | session | round | sender | receiver."""
    return SHARES_LABEL + bytes(session) + struct.pack(">QQQ", round_idx, sender, receiver)


def key_check(key: bytes) -> bytes:
    """BLAKE2s (RFC 7693) of the key, KEY_CHECK_BYTES bytes, personalised with
    :data:`KEY_CHECK_LABEL`: a binding check of one share key, hiding (the key is 256
    uniform bits).  No context is hashed: each key is already bound to its session,
    round, sender and receiver by its HKDF derivation
    (:func:`secagg.agreement.share_encryption_keys`).  BLAKE2s rather than SHA-256: two
    checks per peer per client are on the honest path, and it is the faster of the two."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != SHARE_KEY_BYTES:
        got = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ValueError(f"key must be {SHARE_KEY_BYTES} bytes, got {got}")
    return hashlib.blake2s(key, digest_size=KEY_CHECK_BYTES, person=KEY_CHECK_LABEL).digest()


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
    another session/round/pair, or encrypted under another key), the plaintext
    names other parties (Bonawitz et al. 2017, Fig. 4, Round 2), or a share holds a
    limb that is not a field element (it could never be revealed in Unmasking).
    """
    if not isinstance(key, (bytes, bytearray)) or len(key) != SHARE_KEY_BYTES:
        raise ValueError(f"key must be {SHARE_KEY_BYTES} bytes")
    ad = shares_associated_data(session=session, round_idx=round_idx, sender=sender, receiver=receiver)
    try:
        plaintext = AESGCM(bytes(key)).decrypt(_NONCE, bytes(ciphertext), ad)
    except InvalidTag:
        raise ValueError("authentication failed (tampered, replayed or misrouted ciphertext)") from None
    if len(plaintext) != _PLAINTEXT.size:
        raise ValueError(f"plaintext of {len(plaintext)} bytes, expected {_PLAINTEXT.size}")
    got_sender, got_receiver, b_share, sk_share = _PLAINTEXT.unpack(plaintext)
    if (got_sender, got_receiver) != (sender, receiver):
        raise ValueError(f"plaintext names sender {got_sender} and receiver {got_receiver}")
    if max(_LIMB_WORDS.unpack(plaintext[-2 * SHARE_BYTES :])) >= PRIME:
        raise ValueError(f"the shares do not parse: a limb is >= p = {PRIME}")
    return b_share, sk_share
