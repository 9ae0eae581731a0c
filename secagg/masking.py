"""Masking of encoded inputs: y <- x + sum_i sign_i * PRG(key_i)  (mod 2^k).

Bonawitz et al., CCS 2017, Sec. 3.1-3.2 and Fig. 4 (Round 2, MaskedInputCollection):
with delta_uv = +1 if u < v and -1 if u > v, party u sends

    y_u = x_u + PRG(b_u) + sum_{v in N(u)} delta_uv * PRG(s_uv)   (mod R)

Since s_uv = s_vu, every surviving pair's masks cancel in sum_u y_u; the server
removes the self masks PRG(b_u) of survivors and the pairwise masks of dropped parties
after reconstructing their seeds (Round 4, Unmasking).  All of these are one
operation, :func:`add_masks_`, with different (sign, key) lists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from secagg.encoding import as_ring_array, wrapping_sum
from secagg.prg import KEY_BYTES, Keystream

__all__ = [
    "MASK_NONCE",
    "add_masks_",
    "mask_input",
    "mask_input_",
    "pairwise_mask_sign",
    "pairwise_streams",
    "unmask_sum",
]

_CHUNK_BYTES = 256 * 1024
"""Bytes masked per step: the keystream buffer stays in L2 cache, calls stay few."""

_LOG = logging.getLogger(__name__)

MASK_NONCE: bytes = bytes(16)
"""CTR initial block of every mask stream.  Safe because each mask key is derived
fresh for one (session, round, pair or party) and expands exactly one stream."""


def pairwise_mask_sign(own_id: int, peer_id: int) -> int:
    """delta_uv of Bonawitz et al. 2017, Sec. 3.1: +1 if u < v, -1 if u > v."""
    if own_id == peer_id:
        raise ValueError(f"peer_id must differ from own_id, got both = {own_id}")
    return 1 if own_id < peer_id else -1


def pairwise_streams(own_id: int, peer_keys: Mapping[int, bytes]) -> list[tuple[int, bytes]]:
    """(delta_uv, s_uv) for every peer v, in increasing v: the pairwise part of y_u."""
    if own_id in peer_keys:
        raise ValueError(f"peer_keys must not contain own_id={own_id}")
    return [(pairwise_mask_sign(own_id, v), peer_keys[v]) for v in sorted(peer_keys)]


def add_masks_(y: np.ndarray, streams: Sequence[tuple[int, bytes]]) -> np.ndarray:
    """In place: y <- y + sum_i sign_i * PRG(key_i)  (mod 2^32 or 2^64, from y's dtype).

    ``y``: a flat, contiguous uint32 or uint64 array; ``streams``: (sign in {+1, -1},
    32-byte key) pairs; PRG is AES-256-CTR from nonce :data:`MASK_NONCE`.  Works chunk
    by chunk: each key's keystream continues into one cache-resident buffer, then is
    added or subtracted in place (numpy unsigned arithmetic wraps), so no vector of the
    input's size is allocated whatever the number of keys.  Returns ``y``.
    """
    if not isinstance(y, np.ndarray) or y.dtype not in (np.uint32, np.uint64) or y.ndim != 1:
        got = f"{y.dtype} with shape {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise ValueError(f"y must be a flat uint32 or uint64 numpy array, got {got}")
    if not (y.flags.c_contiguous and y.flags.writeable):
        raise ValueError("y must be contiguous and writeable to be masked in place")
    for sign, key in streams:
        if sign not in (1, -1) or not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"streams must hold (+1 or -1, {KEY_BYTES}-byte key), got sign {sign!r}")
    readers = [(np.add if sign > 0 else np.subtract, Keystream(key, MASK_NONCE)) for sign, key in streams]
    n = y.size
    chunk = max(1, min(_CHUNK_BYTES // y.itemsize, n))
    buffer = np.empty(chunk, dtype=y.dtype)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        target, stream = y[start : start + m], buffer[:m]
        for ufunc, keystream in readers:
            keystream.read_words(stream)
            ufunc(target, stream, out=target)
    return y


def mask_input_(encoded: torch.Tensor, own_id: int, peer_keys: Mapping[int, bytes]) -> torch.Tensor:
    """In place: x_u <- x_u + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2^k).

    ``encoded``: a contiguous CPU int32 (Z_(2^32)) or int64 (Z_(2^64)) tensor; returns
    it, now y_u (pairwise masks only; the protocol adds the self mask).
    ``peer_keys`` maps each peer id v to the 32-byte pairwise key s_uv.
    """
    _check_masking_args(encoded, own_id, peer_keys)
    if not encoded.is_contiguous():
        raise ValueError("encoded must be contiguous to be masked in place")
    add_masks_(as_ring_array(encoded).reshape(-1), pairwise_streams(own_id, peer_keys))
    _LOG.debug("masked %d elements of party %d with %d peers", encoded.numel(), own_id, len(peer_keys))
    return encoded


def mask_input(encoded: torch.Tensor, own_id: int, peer_keys: Mapping[int, bytes]) -> torch.Tensor:
    """y_u = x_u + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)  (mod 2^k), as a new tensor.

    ``encoded`` (x_u, ring elements) is left untouched; see :func:`mask_input_`.
    """
    _check_masking_args(encoded, own_id, peer_keys)
    return mask_input_(encoded.clone(memory_format=torch.contiguous_format), own_id, peer_keys)


def _check_masking_args(encoded: torch.Tensor, own_id: int, peer_keys: Mapping[int, bytes]) -> None:
    if not isinstance(encoded, torch.Tensor) or encoded.dtype not in (torch.int32, torch.int64):
        got = encoded.dtype if isinstance(encoded, torch.Tensor) else type(encoded).__name__
        raise ValueError(f"encoded must be an int32 or int64 torch.Tensor, got {got}")
    if encoded.device.type != "cpu":
        raise ValueError(f"encoded must be on the CPU, got device {encoded.device}")
    if own_id in peer_keys:
        raise ValueError(f"peer_keys must not contain own_id={own_id}")


def unmask_sum(masked: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_u y_u (mod 2^k) = sum_u x_u when every party of the round sent its y_u.

    With no dropouts the pairwise masks cancel (Bonawitz et al. 2017, Sec. 3.1), so
    unmasking is the wrap-around sum.  Inputs are left untouched.
    """
    return wrapping_sum(masked)
