"""Pairwise masking of encoded inputs and unmasking of their sum.

Bonawitz et al., CCS 2017, Sec. 3.1 (eq. for y_u) and Fig. 4 (Round 2,
MaskedInputCollection): with delta_uv = +1 if u < v and -1 if u > v, party u sends

    y_u = x_u + sum_{v != u} delta_uv * PRG(s_uv)   (mod R)

and, since s_uv = s_vu, every pair's masks cancel in sum_u y_u = sum_u x_u (mod R)
(Round 4, Unmasking, with no dropouts).  A later stage adds the self mask PRG(b_u)
and the reconstruction of dropped parties' masks from Shamir shares.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from secagg.encoding import wrapping_add_, wrapping_sub_, wrapping_sum
from secagg.prg import Keystream

__all__ = ["MASK_NONCE", "mask_input", "mask_input_", "pairwise_mask_sign", "unmask_sum"]

_CHUNK = 64 * 1024
"""Elements masked per step (the keystream buffer stays in cache)."""

_LOG = logging.getLogger(__name__)

MASK_NONCE: bytes = bytes(16)
"""CTR initial block of every mask stream.  Safe because each pairwise key is derived
fresh for one (session, round, pair) and expands exactly one stream."""


def pairwise_mask_sign(own_id: int, peer_id: int) -> int:
    """delta_uv of Bonawitz et al. 2017, Sec. 3.1: +1 if u < v, -1 if u > v."""
    if own_id == peer_id:
        raise ValueError(f"peer_id must differ from own_id, got both = {own_id}")
    return 1 if own_id < peer_id else -1


def mask_input_(encoded: torch.Tensor, own_id: int, peer_keys: Mapping[int, bytes]) -> torch.Tensor:
    """In place: x_u <- x_u + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2^32).

    Returns ``encoded``, now y_u.  ``peer_keys`` maps each peer id v to the 32-byte
    pairwise key s_uv.  Works chunk by chunk: each peer's keystream continues into
    one small cache-resident buffer, then is added or subtracted in place, so no
    vector of the input's size is allocated whatever the number of peers.
    """
    _check_masking_args(encoded, own_id, peer_keys)
    if not encoded.is_contiguous():
        raise ValueError("encoded must be contiguous to be masked in place")
    flat = encoded.view(-1)
    signed_streams = [
        (pairwise_mask_sign(own_id, peer_id), Keystream(peer_keys[peer_id], MASK_NONCE))
        for peer_id in sorted(peer_keys)
    ]
    n = flat.numel()
    chunk = max(1, min(_CHUNK, n))
    buffer = torch.empty(chunk, dtype=torch.int32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        target, stream = flat[start : start + m], buffer[:m]
        for sign, keystream in signed_streams:
            keystream.read_into(stream)
            if sign > 0:
                wrapping_add_(target, stream)
            else:
                wrapping_sub_(target, stream)
    _LOG.debug("masked %d elements of party %d with %d peers", n, own_id, len(peer_keys))
    return encoded


def mask_input(encoded: torch.Tensor, own_id: int, peer_keys: Mapping[int, bytes]) -> torch.Tensor:
    """y_u = x_u + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2^32), as a new tensor.

    ``encoded`` (x_u, int32 ring elements) is left untouched; see :func:`mask_input_`.
    """
    _check_masking_args(encoded, own_id, peer_keys)
    return mask_input_(encoded.clone(memory_format=torch.contiguous_format), own_id, peer_keys)


def _check_masking_args(encoded: torch.Tensor, own_id: int, peer_keys: Mapping[int, bytes]) -> None:
    if not isinstance(encoded, torch.Tensor) or encoded.dtype != torch.int32:
        got = encoded.dtype if isinstance(encoded, torch.Tensor) else type(encoded).__name__
        raise ValueError(f"encoded must be an int32 torch.Tensor, got {got}")
    if encoded.device.type != "cpu":
        raise ValueError(f"encoded must be on the CPU, got device {encoded.device}")
    if own_id in peer_keys:
        raise ValueError(f"peer_keys must not contain own_id={own_id}")


def unmask_sum(masked: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_u y_u (mod 2^32) = sum_u x_u when every party of the round sent its y_u.

    With no dropouts the pairwise masks cancel (Bonawitz et al. 2017, Sec. 3.1), so
    unmasking is the wrap-around sum.  Inputs are left untouched.
    """
    return wrapping_sum(masked)
