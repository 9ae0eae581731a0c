"""Every secret random source of fedsim, in one file to audit.

Privacy rests on randomness the adversary cannot predict: DP noise predictable from a
public seed protects nothing, and amplification by subsampling holds only while the
sample stays secret. So no secret draw ever follows the run's public ``seed`` (which
fixes the data split, the partition, the LoRA initialisation and injected dropouts: the
*public* draws, made with seeded torch/``random`` generators elsewhere), and every secret
draw starts here, from a :class:`SecretRandom`:

=====================================  ====================================  =====================================
what                                   where it is drawn                     source
=====================================  ====================================  =====================================
DP-SGD noise N(0, σ²C²)                :mod:`fedsim.dp.optimizer`            :meth:`SecretRandom.normal`
Poisson sampling of each batch         :mod:`fedsim.client.trainer`          :meth:`SecretRandom.bernoulli_mask`
each round's cohort (Poisson)          :mod:`fedsim.population`              :meth:`SecretRandom.bernoulli_mask`
each round's cohort (fixed size)       :mod:`fedsim.population`              :meth:`SecretRandom.sample_without_replacement`
stochastic-rounding coins (encoding)   :mod:`fedsim.secure_sum.exchange`     :meth:`SecretRandom.key` (AES-CTR key)
Skellam rounding coins (client level)  :mod:`fedsim.dp.skellam`              :attr:`SecretRandom.numpy` (uniform)
audit canaries' membership             :mod:`fedsim.audit.canaries`          :meth:`SecretRandom.bernoulli_mask`
Skellam noise (client level)           :mod:`fedsim.dp.skellam`              :attr:`SecretRandom.numpy` (Poisson)
secure-aggregation session id          :mod:`fedsim.server.loop`             :func:`session_id` (``os.urandom``)
=====================================  ====================================  =====================================

The secure-aggregation protocol's own keys and masks (X25519, HKDF, AES-CTR) are drawn
inside :mod:`secagg` from ``cryptography``; nothing here touches them.

**Generator.** ChaCha20 (Bernstein 2008; 20 rounds, RFC 8439's cipher) in counter mode,
``randomgen.ChaCha(key=..., rounds=20)``, keyed with 256 bits from ``os.urandom`` per
instance, behind ``numpy.random.Generator``'s samplers (Ziggurat normals, Lemire's unbiased
integers, exact Poisson/binomial). Why ChaCha20:

- it is a stream cipher, so its output is indistinguishable from uniform to anyone without
  the key; a 256-bit key leaves no seed to search (torch's Mersenne Twister and Philox, used
  before, were seeded with 63 bits, and MT19937's state is recoverable from 624 outputs);
- it is the construction of the Linux kernel's and OpenBSD's CSPRNGs, and is constant time
  in portable software (additions, rotations, xors: no table look-ups), whereas AES-CTR
  (``randomgen.AESCounter``, ~40% less time here) is constant time only with AES-NI and falls
  back to table-based AES, open to cache-timing attacks, where it is missing;
- a ``cryptography`` keystream (OpenSSL's ChaCha20) yields raw bytes ~8x faster, but would
  need our own Gaussian, Poisson and binomial samplers on top; numpy's are exact, tested
  and what the Skellam noise needs, so the audit surface stays small.

Cost (measured on a shared 2-vCPU machine, one thread): 1e6 float64 normals in 38 ms
(float32 Ziggurat 25 ms; torch's Mersenne Twister 16 ms); ``benchmarks/bench_dp_step.py``
prints the draw per DP-SGD step beside the DP / plain step ratio (budget 1.15x).

**CUDA.** Noise is drawn on the CPU from the CSPRNG and copied to the device
(``torch.Tensor.to(device)``) before it is added to the clipped gradient sum there; no GPU
generator (Philox, a non-cryptographic counter PRNG seeded with 64 bits) is ever used for
a secret. The copy holds the active parameters' noise only (at most the default model's
150,536 trainable values, 0.6 MB of float32 per step). Measured on the CPU: drawing all
150,536 takes 4.1 ms (0.13 ms per sample of a 32-record step, ~0.6% of it). The copy was not
measured (no GPU in that session); on a GPU whose step takes a few milliseconds the CPU
draw becomes a visible share of it, and could be overlapped with the device's work by
drawing the next step's noise in a thread (numpy's samplers release the GIL): not done.

**Floating point.** Mironov (CCS 2012, "On Significance of the Least Significant Bits for
Differential Privacy") showed that textbook floating-point Laplace sampling leaks the
noise-free value through the low bits of the output: the set of floats a sampler can
produce around x depends on x. Jin et al. (IEEE S&P 2022, "Are We There Yet? Timing and
Floating-Point Attacks on Differential Privacy Systems") carried the attack over to
Gaussian samplers, Opacus's included: a sampler whose outputs are a sparse set of floats
reveals which of two neighbouring inputs a noisy output came from. :meth:`SecretRandom.normal`
closes that gap for the noise itself (:func:`normal_draws`): float32 noise is one float64
Ziggurat draw rounded once, dense at float32 resolution; float64 noise is the sum of 4
draws divided by 2 (Holohan & Braghin 2021, "Secure Random Sampling in Differential
Privacy", Sec. 5.1; what Opacus's ``secure_mode`` does). What the DP-SGD path still has:
the noise is added to the clipped sum in floating point, and the rounding of that addition
(cells of unequal width at binade boundaries) is not analysed; the ε reported for DP-SGD is
the one of the ideal real-valued Gaussian mechanism, not a proof about its float32
implementation (that would need Mironov's snapping or a discrete Gaussian, Canonne, Kamath
& Steinke, NeurIPS 2020). The client-level path does not have the problem: Skellam noise is
an integer (two exact Poisson draws) added to an integer, rounded update inside the
secure-aggregation ring, and its accountant analyses exactly that discrete mechanism.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import randomgen
import torch

from secagg.params import SESSION_BYTES

__all__ = ["FLOAT64_DRAWS", "KEY_BYTES", "SecretRandom", "normal_draws", "secret_random", "session_id"]

KEY_BYTES: int = 32
"""ChaCha20 key length: 256 bits."""

ROUNDS: int = 20
"""ChaCha rounds: the full-strength cipher (ChaCha8/12 trade margin for speed)."""

_NUMPY_FLOAT = {torch.float64: np.float64, torch.float32: np.float32}
_CPU = torch.device("cpu")

FLOAT64_DRAWS: int = 4
"""Standard normals summed per float64 noise value (Holohan & Braghin 2021, Sec. 5.1, n = 2)."""


def normal_draws(dtype: torch.dtype) -> int:
    """How many float64 standard normals :meth:`SecretRandom.normal` sums per value of ``dtype``.

    numpy's float64 Ziggurat (Marsaglia & Tsang 2000; numpy's ``random_standard_normal``)
    returns ±j·w_i for 99.3% of draws, j a 52-bit integer and w_i < 4·2^-52 the step of
    strip i. float32's spacing at |v| is at least |v|·2^-24, so that lattice is |v|·2^26
    times finer (≥ 2^24 for |v| ≥ 1/4) for all but the ~1e-8 of draws with |v| < 2^-26:
    rounding one draw to float32 (or narrower) reaches every float in range, with the
    Gaussian's weights up to a relative 1/(|v|·2^26) — 1 draw. In float64 the lattice is
    as coarse as, or coarser than, the spacing of the values it produces (by x_i/|v| below
    the strip's top x_i), leaving the gaps that Mironov-style attacks read (Jin et al.
    2022): :data:`FLOAT64_DRAWS` draws, summed and divided by √FLOAT64_DRAWS (still exactly
    N(0, 1) in real arithmetic).
    """
    return FLOAT64_DRAWS if torch.finfo(dtype).bits >= 64 else 1


class SecretRandom:
    """ChaCha20 (randomgen) keyed with 256 bits from ``os.urandom``, behind numpy's samplers.

    ``key=None`` (every use in fedsim) draws a fresh key from the OS; an explicit 32-byte
    key makes the stream reproducible and is for tests only. One instance per consumer;
    not for sharing across threads.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else type(key).__name__
            raise ValueError(f"key must be {KEY_BYTES} bytes (256 bits), got {got}")
        bits = randomgen.ChaCha(key=int.from_bytes(bytes(key), "little"), rounds=ROUNDS)
        self._generator = np.random.Generator(bits)

    def __repr__(self) -> str:
        return f"SecretRandom(ChaCha{ROUNDS}, key=<{KEY_BYTES * 8} bits, hidden>)"

    @property
    def numpy(self) -> np.random.Generator:
        """numpy's samplers over this ChaCha20 stream (e.g. ``.poisson`` for Skellam noise)."""
        return self._generator

    def normal(
        self,
        shape: int | Sequence[int] | torch.Size,
        *,
        std: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = _CPU,
    ) -> torch.Tensor:
        """N(0, std²) of ``shape``, as ``dtype`` on ``device`` (drawn on the CPU, then copied).

        Each value is ``std · (Z_1 + … + Z_k) / √k`` with Z_i float64 standard normals and
        k = :func:`normal_draws` (``dtype``), computed in float64 and rounded once to
        ``dtype``: exactly N(0, std²) in real arithmetic, and without the floating-point
        gaps of a sampler run at the output's precision (see the module docstring).
        """
        if not (math.isfinite(std) and std >= 0):
            raise ValueError(f"std must be finite and >= 0, got {std!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype}")
        draws = normal_draws(dtype)
        size = tuple(torch.Size([shape]) if isinstance(shape, int) else torch.Size(shape))
        values = np.asarray(self._generator.standard_normal(size))
        scratch = np.empty_like(values) if draws > 1 else None
        for _ in range(draws - 1):
            values += self._generator.standard_normal(out=scratch)
        values *= std / math.sqrt(draws)
        out = torch.from_numpy(values.astype(_NUMPY_FLOAT.get(dtype, np.float32), copy=False))
        return out.to(device=device, dtype=dtype)

    def bernoulli_mask(self, n: int, p: float) -> torch.Tensor:
        """``n`` independent coins, each True with probability ``p`` (a bool CPU tensor).

        Coin i is ``U_i < p`` with U_i uniform on the 53-bit grid of [0, 1): its probability
        is p rounded up to a multiple of 2^-53.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        return torch.from_numpy(self._generator.random(n) < p)

    def key(self, nbytes: int = KEY_BYTES) -> bytes:
        """``nbytes`` of fresh key material from the stream (e.g. the rounding coins' AES key)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
            raise ValueError(f"nbytes must be an int >= 1, got {nbytes!r}")
        return self._generator.bytes(nbytes)

    def sample_without_replacement(self, population: int, k: int) -> list[int]:
        """``k`` distinct values of ``range(population)``, every k-subset equally likely (in draw order)."""
        if isinstance(population, bool) or not isinstance(population, int) or population < 0:
            raise ValueError(f"population must be an int >= 0, got {population!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= population:
            raise ValueError(f"k must be an int in [0, {population}], got {k!r}")
        return [int(i) for i in self._generator.choice(population, size=k, replace=False)]


def secret_random() -> SecretRandom:
    """A fresh :class:`SecretRandom` keyed from the OS CSPRNG."""
    return SecretRandom()


def session_id() -> bytes:
    """A fresh secure-aggregation session id (so no message replays across sessions)."""
    return os.urandom(SESSION_BYTES)
