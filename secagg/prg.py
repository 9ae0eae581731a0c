"""Pseudorandom generator for masks: the AES-256-CTR keystream.

Bonawitz et al., CCS 2017, Sec. 3 and Fig. 4 (Round 2, MaskedInputCollection) expand
a short shared seed s_uv (and the self-mask seed b_u) into a mask vector PRG(.) in
Z_R^m.  Here PRG is the AES-256 keystream in counter mode from ``cryptography`` (a
256-bit key, never a narrow seed), written straight into the memory of the caller's
ring array (``update_into``, no temporary of the vector's size) and read as
little-endian words of Z_(2^32) or Z_(2^64).

Contrast: Flower's SecAgg+ folds its seeds to 32 bits and expands them with numpy's
MT19937 (a non-cryptographic generator whose state is recoverable from 624 outputs);
here every seed is a 256-bit key and the generator is a block cipher.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["KEY_BYTES", "NONCE_BYTES", "Keystream", "keystream_into"]

KEY_BYTES: int = 32
"""AES-256 key length."""

NONCE_BYTES: int = 16
"""Initial counter block length for CTR mode."""

_BLOCK_BYTES = 16
_PIECE_BYTES = 32 * 1024  # zero plaintext per cipher call: stays in L1/L2 cache
_TORCH_WORDS = (torch.int32, torch.int64)
_NUMPY_WORDS = (np.dtype(np.uint32), np.dtype(np.uint64), np.dtype(np.int32), np.dtype(np.int64))


def _check_bytes(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"{name} must be bytes of length {length}, got {type(value).__name__}")
    if len(value) != length:
        raise ValueError(f"{name} must be exactly {length} bytes, got {len(value)}")
    return bytes(value)


def _words(out: torch.Tensor | np.ndarray) -> np.ndarray:
    """The writable, C-contiguous numpy view of ``out`` (torch int32/int64 on the CPU,
    or a numpy array of 32- or 64-bit integers), after validation."""
    if isinstance(out, torch.Tensor):
        if out.dtype not in _TORCH_WORDS:
            raise ValueError(f"out must have dtype torch.int32 or torch.int64, got {out.dtype}")
        if out.device.type != "cpu":
            raise ValueError(f"out must be on the CPU, got device {out.device}")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous, got a strided tensor")
        return out.numpy()
    if isinstance(out, np.ndarray):
        if out.dtype not in _NUMPY_WORDS:
            raise ValueError(f"out must have a 32- or 64-bit integer dtype, got {out.dtype}")
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("out must be contiguous and writeable, got a strided or read-only array")
        return out
    raise ValueError(f"out must be a torch.Tensor or numpy.ndarray, got {type(out).__name__}")


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

    def read_into(self, out: torch.Tensor | np.ndarray) -> None:
        """Fill ``out`` with the next bytes of the stream.

        ``out``: a contiguous CPU torch int32/int64 tensor or a numpy array of 32- or
        64-bit integers.  The stream is the encryption of zero bytes; ``update_into``
        writes it straight into the array's memory.  Each word is read little-endian
        on every platform, so two parties always derive equal masks.
        """
        self.read_words(_words(out))

    def read_words(self, words: np.ndarray) -> None:
        """:meth:`read_into` without validation, for hot loops over checked buffers."""
        buf = memoryview(words).cast("B")
        nbytes = len(buf)
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
            words.byteswap(inplace=True)


def keystream_into(out: torch.Tensor | np.ndarray, key: bytes, nonce: bytes) -> None:
    """Fill ``out`` with the AES-256-CTR keystream, in place.

    PRG(key) of Bonawitz et al. 2017, Sec. 3: no copy of the size of ``out`` is made.
    Validates a 32-byte key and a 16-byte nonce, and ``out`` as in
    :meth:`Keystream.read_into`.
    """
    _words(out)
    Keystream(key, nonce).read_into(out)
