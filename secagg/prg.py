"""Pseudorandom generator for masks: the AES-256-CTR keystream.

Bonawitz et al., CCS 2017, Sec. 3 and Fig. 4 (Round 2, MaskedInputCollection) expand
a short shared seed s_uv into a mask vector PRG(s_uv) in Z_R^m.  Here PRG is the
AES-256 keystream in counter mode from ``cryptography`` (a 256-bit key, never a
narrow seed), written straight into the memory of int32 tensors and read as
little-endian words of Z_(2^32).
"""

from __future__ import annotations

import sys

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["KEY_BYTES", "NONCE_BYTES", "Keystream", "keystream_into"]

KEY_BYTES: int = 32
"""AES-256 key length."""

NONCE_BYTES: int = 16
"""Initial counter block length for CTR mode."""

_BLOCK_BYTES = 16
_PIECE_BYTES = 32 * 1024  # zero plaintext per cipher call: stays in L1/L2 cache


def _check_bytes(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"{name} must be bytes of length {length}, got {type(value).__name__}")
    if len(value) != length:
        raise ValueError(f"{name} must be exactly {length} bytes, got {len(value)}")
    return bytes(value)


def _check_out(out: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.int32:
        raise ValueError(f"out must have dtype torch.int32, got {out.dtype}")
    if out.device.type != "cpu":
        raise ValueError(f"out must be on the CPU, got device {out.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous, got a strided tensor")


class Keystream:
    """The AES-256-CTR keystream under (key, nonce), read front to back.

    Successive :meth:`read_into` calls continue the stream, so a long mask can be
    produced chunk by chunk into a small cache-resident buffer.  A (key, nonce) pair
    must expand one stream only: callers derive a fresh key per use.
    """

    def __init__(self, key: bytes, nonce: bytes) -> None:
        key = _check_bytes("key", key, KEY_BYTES)
        nonce = _check_bytes("nonce", nonce, NONCE_BYTES)
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self._zeros = memoryview(bytes(_PIECE_BYTES))

    def read_into(self, out: torch.Tensor) -> None:
        """Fill ``out`` (contiguous CPU int32) with the next bytes of the stream.

        The stream is the encryption of zero bytes; ``update_into`` writes it straight
        into the tensor's memory (its numpy view).  Word i holds 4 stream bytes read
        little-endian on every platform, so two parties always derive equal masks.
        """
        _check_out(out)
        nbytes = out.numel() * out.element_size()
        buf = memoryview(out.numpy()).cast("B")
        # update_into needs len(buf) >= len(data) + block_size - 1: write full pieces
        # while that room exists, then all but the last <= 16 bytes, then copy those.
        offset = 0
        while nbytes - offset >= _PIECE_BYTES + _BLOCK_BYTES:
            self._encryptor.update_into(self._zeros, buf[offset:])
            offset += _PIECE_BYTES
        head = nbytes - offset - _BLOCK_BYTES
        if head > 0:
            self._encryptor.update_into(self._zeros[:head], buf[offset:])
            offset += head
        buf[offset:] = self._encryptor.update(self._zeros[: nbytes - offset])
        if sys.byteorder == "big":  # pragma: no cover - all supported hosts are little-endian
            out.numpy().byteswap(inplace=True)


def keystream_into(out: torch.Tensor, key: bytes, nonce: bytes) -> None:
    """Fill ``out`` (contiguous CPU int32) with the AES-256-CTR keystream, in place.

    PRG(key) of Bonawitz et al. 2017, Sec. 3: no copy of the size of ``out`` is made.
    Validates a 32-byte key and a 16-byte nonce.
    """
    _check_out(out)
    Keystream(key, nonce).read_into(out)
