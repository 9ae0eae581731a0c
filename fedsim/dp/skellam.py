"""The distributed Skellam mechanism: client-level DP whose integer noise is added in the ring.

Agarwal, Kairouz, Liu, NeurIPS 2021, "The Skellam Mechanism for Differentially Private
Federated Learning" (arXiv:2110.04995; AKL21 below), Alg. 1, with the randomized
Hadamard flattening and the conditional randomized rounding of Kairouz, Liu, Steinke,
ICML 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation" (arXiv:2102.06387; KLS21 below). Each of the m planned cohort
members, with the public per-sum rotation seed:

1. clips its update x (length d) to L2 norm S and scales it by γ: norm <= c = γS;
2. pads it to d' = 2^ceil(log2 d) and rotates it, y = H·D·γx/√d' (H the Sylvester
   Hadamard matrix, D = diag of ±1 signs from the seed; orthonormal, so ‖y‖ <= c);
3. rounds y to integers, each coordinate up with probability its fractional part,
   again until ‖r‖₂ <= Δ2 (KLS21, Thm. 1; rounding toward zero after
   :data:`MAX_ROUNDING_TRIES`), so Δ2 bounds every input's rounded norm, whatever it is;
4. adds integer Skellam noise Sk(μ/m) := Pois(μ/m) − Pois(μ/m) per coordinate;
5. reduces into Z_(2^b) with no clipping: the secure sum is the ring sum.

The server centres the ring sum (two's complement), rotates it back and divides by γ.
Sums of independent Skellams are Skellam, so s surviving shares carry exactly
Sk(s·μ/m) (:meth:`SkellamParams.realized_mu`), variance 2·s·μ/m. With μ = (γzS)²/2 the
full cohort's noise has variance (γzS)² in integer units, i.e. (zS)² in the update's.
A coordinate of the sum decodes wrongly only if its integer value leaves
[−2^(b−1), 2^(b−1)): γ is chosen (:func:`skellam_params`) so that this happens with
probability at most ``wrap_probability`` per coordinate even with ``guard_bits`` of the
ring left free, which lets :meth:`SkellamCodec.out_of_range` flag sums no honest cohort
produces. The wrap is post-processing of the DP sum: it can cost accuracy, never privacy.

Wrap bound. For s <= n honest inputs fixed independently of the signs D, coordinate j of
the integer sum is A + R + N: A = Σ_k D_k·H_jk·γX_k/√d' with ‖X‖₂ <= sS is sub-Gaussian
with variance proxy σ² = (sγS)²/d' (Hoeffding over the Rademacher D_k); |R| < 2s (per
client: the rounding, < 1, and the rotation's floating-point error and norm rescale,
< 1 for γS <= 2^25); N ~ Sk(s·μ/m), independent of A. The Chernoff bound with
E e^{θ(A+N)} <= exp(θ²σ²/2 + 2μ_s(cosh θ − 1)) gives, at t = θσ² + 2μ_s·sinh θ,

    P(|A + N| >= t) <= 2·exp(−h(θ)),   h(θ) = θ²σ²/2 + 2μ_s(θ sinh θ − cosh θ + 1),

so B(s) = 2s + t with h(θ) = ln(2/p) bounds |coordinate| except with probability p
(:func:`tail_quantile`, :meth:`SkellamParams.honest_bound`). (TFF's distributed DP sizes
the ring at k = 3 or 4 standard deviations of the sum instead, a heuristic.)

Randomness: the rounding coins and the noise come from the caller's ``rng``, a
``numpy.random.Generator`` over a CSPRNG (:mod:`fedsim.dp.randomness`); the rotation
signs are public (the server must invert them) and come from the AES-256-CTR keystream
(:mod:`secagg.prg`) under a key derived from the session and the exchange.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.encoding import SUPPORTED_MODULUS_BITS, ring_dtype
from secagg.prg import KEY_BYTES, NONCE_BYTES, Keystream

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_GUARD_BITS",
    "DEFAULT_MAX_ROUNDING_INFLATION",
    "DEFAULT_MAX_WRAP_PROBABILITY",
    "MAX_PADDED_DIM",
    "MAX_ROUNDING_TRIES",
    "MAX_SCALED_CLIP",
    "MAX_SHARE_MU",
    "SkellamCodec",
    "SkellamParams",
    "centred",
    "clip_to_norm",
    "conditional_round",
    "hadamard_transform",
    "l1_sensitivity",
    "padded_dim",
    "rotate",
    "rotation_seed",
    "rotation_signs",
    "rounded_l2_bound",
    "skellam_noise",
    "skellam_params",
    "tail_log_bound",
    "tail_quantile",
    "to_ring",
    "unrotate",
]

logger = logging.getLogger(__name__)

DEFAULT_BETA: float = math.exp(-0.5)
"""β of the conditional rounding (KLS21, Thm. 1), as in TFF's distributed DP: then
√(2 ln(1/β)) = 1, so Δ2² = c² + d'/4 + c + √d'/2, and one rounding attempt fails with
probability at most β, i.e. at most 1/(1 − β) ≈ 2.5 attempts on average."""

DEFAULT_MAX_WRAP_PROBABILITY: float = 1e-12
"""Default bound on the probability that one coordinate of an honest sum leaves the honest
range (hence on a wrap, and on a false alarm of :meth:`SkellamCodec.out_of_range`):
at most d'·1e-12 <= 2.1e-6 per secure sum of d' <= 2^21 coordinates."""

DEFAULT_GUARD_BITS: int = 8
"""Ring bits kept free above the honest range (as :data:`fedsim.secure_sum.config.GUARD_BITS`):
a random ring value lands inside the honest range with probability about 2^-8."""

DEFAULT_MAX_ROUNDING_INFLATION: float = 1.01
"""Largest accepted Δ2/(γS): the rounding may cost at most 1% of the noise multiplier
(the accountant sees the noise std γzS against the sensitivity Δ2)."""

MAX_ROUNDING_TRIES: int = 64
"""Randomized rounding attempts before rounding toward zero (all fail w.p. <= β^64)."""

MAX_SCALED_CLIP: float = 2.0**25
"""Largest c = γS. Beyond it the rounding inflation Δ2/c − 1 < 2^-25 gains nothing, and
below it the rotation's floating-point error stays far under one integer step."""

MAX_SHARE_MU: float = 2.0**48
"""Largest Poisson parameter μ/m of one client's share (numpy's sampler stays exact in
float64 well below 2^53)."""

MAX_PADDED_DIM: int = 2**24
"""Largest padded dimension d'."""

_ROTATION_INFO = b"fedsim.dp.skellam rotation signs v1"
_HADAMARD_BLOCK = 64  # levels below this go through one small matrix product
_NORM_MARGIN = 2.0**-28  # the rotated vector is rescaled to norm <= c·(1 − margin)


# --- dimensions, clipping, rotation ------------------------------------------------------


def padded_dim(dim: int) -> int:
    """d' = the smallest power of two >= ``dim`` (the Hadamard transform's length)."""
    _check_int("dim", dim, 1, MAX_PADDED_DIM)
    return 1 << (dim - 1).bit_length()


def _l2_norm(x: np.ndarray) -> float:
    """‖x‖₂ in float64 without overflow (rescaled by max|x| when the plain sum overflows)."""
    with np.errstate(over="ignore"):
        norm = math.sqrt(float(np.dot(x, x)))
    if math.isfinite(norm):
        return norm
    amax = float(np.max(np.abs(x)))
    scaled = x / amax
    return amax * math.sqrt(float(np.dot(scaled, scaled)))


def clip_to_norm(x: np.ndarray, bound: float) -> np.ndarray:
    """x·min(1, bound/‖x‖₂), a new float64 array (DP-FedAvg's ClipFn, McMahan et al.,
    ICLR 2018, Alg. 1; AKL21, Alg. 1, the client's clipping step). Finite inputs only."""
    x = np.asarray(x, dtype=np.float64)
    norm = _l2_norm(x)
    if norm <= bound:
        return x.copy()
    return x * (bound / norm)


def rotation_seed(session: bytes, exchange: int) -> bytes:
    """The public seed of one secure sum's rotation: HKDF-SHA256 (RFC 5869) of the session id,
    with the exchange index in ``info``; 32 bytes, an AES-256 key for :func:`rotation_signs`.

    Every party of the sum derives the same seed; a new exchange (round, phase) gets
    independent signs (KLS21, Algs. 1–2: the rotation's randomness is shared and public).
    """
    if not isinstance(session, (bytes, bytearray)) or len(session) == 0:
        got = f"{len(session)} bytes" if isinstance(session, (bytes, bytearray)) else type(session).__name__
        raise ValueError(f"session must be non-empty bytes, got {got}")
    _check_int("exchange", exchange, 0, 2**64 - 1)
    info = _ROTATION_INFO + int(exchange).to_bytes(8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(bytes(session))


def rotation_signs(seed: bytes, n: int) -> np.ndarray:
    """The diagonal of D: n signs ±1.0 (float64), bit j of the AES-256-CTR keystream under
    ``seed`` (nonce 0) giving sign j: uniform and independent (Rademacher), as the rotation's
    sub-Gaussian bound needs (KLS21, flattening by a randomized Hadamard transform)."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != KEY_BYTES:
        got = f"{len(seed)} bytes" if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ValueError(f"rotation_seed must be {KEY_BYTES} bytes, got {got}")
    _check_int("n", n, 1, MAX_PADDED_DIM)
    words = np.empty((n + 63) // 64, dtype=np.uint64)
    Keystream(bytes(seed), bytes(NONCE_BYTES)).read_into(words)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:n]
    return 1.0 - 2.0 * bits.astype(np.float64)


@functools.lru_cache(maxsize=None)
def _sylvester(n: int) -> np.ndarray:
    """The n x n Sylvester Hadamard matrix H_n (H_1 = [1], H_2k = [[H, H], [H, -H]]), read-only (cached)."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    h.setflags(write=False)
    return h


def hadamard_transform(x: np.ndarray) -> np.ndarray:
    """H·x for the Sylvester Hadamard matrix H of order n = len(x), a power of two
    (unnormalized: H·H = n·I), as a new float64 array, in O(n log n).

    The low log2(64) butterfly levels are one product with H_64 on rows of 64, the others
    the in-place butterflies (a, b) -> (a + b, a − b) on contiguous halves: H_n factors
    as a Kronecker product of H_2's, whose levels commute. Matches
    ``scipy.linalg.hadamard(n) @ x``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if x.ndim != 1 or n < 1 or n & (n - 1):
        raise ValueError(f"x must be 1-D with a power-of-two length, got shape {x.shape}")
    block = min(n, _HADAMARD_BLOCK)
    out = (x.reshape(-1, block) @ _sylvester(block)).reshape(-1)
    tmp = np.empty(n // 2)
    h = block
    while h < n:
        pairs = out.reshape(-1, 2, h)
        a, b = pairs[:, 0, :], pairs[:, 1, :]
        diff = tmp.reshape(-1, h)
        np.subtract(a, b, out=diff)
        np.add(a, b, out=a)
        b[...] = diff
        h *= 2
    return out


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """H·D·x/√n: the randomized Hadamard rotation (orthonormal) of KLS21, with D = diag(signs)."""
    return hadamard_transform(np.asarray(x, dtype=np.float64) * signs) * (1.0 / math.sqrt(len(signs)))


def unrotate(y: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The inverse rotation D·H·y/√n (H symmetric, H·H = n·I, D·D = I)."""
    return hadamard_transform(y) * (1.0 / math.sqrt(len(signs))) * signs


# --- conditional randomized rounding ---------------------------------------------------------


def rounded_l2_bound(c: float, n: int, beta: float) -> float:
    """Δ2: the L2 norm bound that conditional randomized rounding guarantees for a real vector
    of norm <= c in n dimensions, in integer units (KLS21, Thm. 1, Δ̃₂ with granularity 1):

        Δ2² = min( c² + n/4 + √(2 ln(1/β))·(c + √n/2),  (c + √n)² ).

    The second term holds for any rounding to a neighbouring integer (each coordinate moves
    by < 1); the first is what one randomized rounding attempt meets with probability
    >= 1 − β, the condition :func:`conditional_round` retries on.
    """
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"c={c!r} is invalid: expected a finite number >= 0")
    _check_int("n", n, 1, MAX_PADDED_DIM)
    _check_open_unit("beta", beta)
    root_n = math.sqrt(n)
    conditioned = c * c + n / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + root_n / 2)
    return min(math.sqrt(conditioned), c + root_n)


def l1_sensitivity(l2: float, n: int) -> float:
    """Δ1 = min(Δ2², √n·Δ2): an L1 bound for integer vectors of L2 norm <= Δ2 in n dimensions
    (|v| <= v² for integers, and Cauchy–Schwarz), as AKL21's RDP bound takes it."""
    return min(l2 * l2, math.sqrt(n) * l2)


def _exact_norm_sq(r: np.ndarray) -> int:
    """Σ r_j² exactly, as a Python int: int64 partial sums over blocks short enough not to
    overflow (|r_j| < 3.03e9), else Python integers."""
    if r.size == 0:
        return 0
    amax = int(np.max(np.abs(r)))
    if amax == 0:
        return 0
    limit = 2**63 - 1
    if amax * amax > limit:
        return sum(v * v for v in r.tolist())
    block = max(1, limit // (amax * amax))
    squares = r * r
    sums = np.add.reduceat(squares, np.arange(0, r.size, block))
    return sum(sums.tolist())


def _within(r: np.ndarray, bound_sq: Fraction) -> bool:
    return _exact_norm_sq(r) <= bound_sq


def conditional_round(y: np.ndarray, bound: float, rng: np.random.Generator, max_tries: int = MAX_ROUNDING_TRIES) -> np.ndarray:
    """Round y to integers (int64) with ‖result‖₂ <= ``bound``, always (KLS21, Thm. 1).

    Each attempt rounds every coordinate up with probability its fractional part (coins
    ``rng.random() < frac``, 53-bit uniforms), and is kept if its squared norm, computed
    exactly in integers, is <= bound² (exact rational comparison). After ``max_tries``
    failed attempts y is rounded toward zero, whose norm is <= ‖y‖₂. If even that exceeds
    ``bound`` (only when ‖y‖₂ > bound, which :class:`SkellamCodec` rules out) nothing is
    returned: RuntimeError, so no vector beyond the bound ever leaves.
    """
    y = np.asarray(y, dtype=np.float64)
    bound_sq = Fraction(bound) ** 2
    floor = np.floor(y)
    frac = y - floor
    base = floor.astype(np.int64)
    for _ in range(max_tries):
        r = base + (rng.random(y.shape[0]) < frac)
        if _within(r, bound_sq):
            return r
    r = np.trunc(y).astype(np.int64)
    if _within(r, bound_sq):
        logger.warning("conditional rounding: %d attempts exceeded Δ2=%.6g; rounded toward zero", max_tries, bound)
        return r
    raise RuntimeError(f"no rounding of a vector of norm {_l2_norm(y):.6g} fits the bound Δ2={bound:.6g}")


# --- noise and the ring ----------------------------------------------------------------------


def skellam_noise(n: int, mu: float, rng: np.random.Generator) -> np.ndarray:
    """n draws of Sk(μ) := Pois(μ) − Pois(μ) (int64), variance 2μ (AKL21, Sec. 3: the
    symmetric Skellam; a sum of independent Sk(μ_i) is Sk(Σμ_i)), from numpy's exact
    Poisson samplers over ``rng``. μ = 0 gives zeros."""
    _check_int("n", n, 1, MAX_PADDED_DIM)
    if not (isinstance(mu, (int, float)) and math.isfinite(mu) and 0 <= mu <= MAX_SHARE_MU):
        raise ValueError(f"mu={mu!r} is invalid: expected a number in [0, {MAX_SHARE_MU:.6g}]")
    if mu == 0:
        return np.zeros(n, dtype=np.int64)
    noise = rng.poisson(mu, n)
    noise -= rng.poisson(mu, n)
    return noise


def to_ring(v: np.ndarray, modulus_bits: int) -> np.ndarray:
    """v mod 2^b for int64 v, as the ring's unsigned dtype (:func:`secagg.encoding.ring_dtype`):
    the two's complement bits reinterpreted (b = 64) or their low 32 bits (b = 32). No clipping."""
    dtype = ring_dtype(modulus_bits)
    v = np.ascontiguousarray(v, dtype=np.int64)
    if modulus_bits == 64:
        return v.view(np.uint64).copy()
    return np.bitwise_and(v, 0xFFFFFFFF).astype(dtype)


def centred(ring: np.ndarray, modulus_bits: int) -> np.ndarray:
    """The representative of each ring element in [−2^(b−1), 2^(b−1)), as int64 (a signed view)."""
    if not isinstance(ring, np.ndarray) or ring.dtype != ring_dtype(modulus_bits):
        got = ring.dtype if isinstance(ring, np.ndarray) else type(ring).__name__
        raise ValueError(f"ring_sum must be a numpy array of dtype {ring_dtype(modulus_bits)}, got {got}")
    signed = np.int32 if modulus_bits == 32 else np.int64
    return ring.view(signed).astype(np.int64)


# --- tail bounds for the honest sum ------------------------------------------------------


def _excess(theta: float) -> float:
    """θ·sinh θ − cosh θ + 1 (>= θ²/2), by its series where the difference cancels."""
    if theta < 1e-2:
        t2 = theta * theta
        return t2 / 2 + t2 * t2 / 8 + t2 * t2 * t2 / 144
    try:
        return theta * math.sinh(theta) - math.cosh(theta) + 1
    except OverflowError:
        return math.inf


def _log_decay(theta: float, sigma2: float, mu: float) -> float:
    """h(θ) = θ²σ²/2 + 2μ·(θ sinh θ − cosh θ + 1): minus the Chernoff exponent at its optimal t."""
    gauss = theta * theta * sigma2 / 2
    return gauss if mu == 0 else gauss + 2 * mu * _excess(theta)


def _check_tail_args(sigma2: float, mu: float) -> None:
    if not (math.isfinite(sigma2) and sigma2 >= 0 and math.isfinite(mu) and mu >= 0 and sigma2 + mu > 0):
        raise ValueError(f"sigma2={sigma2!r}, mu={mu!r} are invalid: expected finite numbers >= 0, not both 0")


def tail_log_bound(t: float, sigma2: float, mu: float) -> float:
    """ln of a bound on P(|A + N| >= t) for A sub-Gaussian with variance proxy σ² and
    N ~ Sk(μ) independent of A (Chernoff: E e^{θ(A+N)} <= exp(θ²σ²/2 + 2μ(cosh θ − 1)),
    the Skellam's moment generating function):

        ln 2 + inf_θ>0 [ −θt + θ²σ²/2 + 2μ(cosh θ − 1) ].

    The infimum is at θ with t = θσ² + 2μ·sinh θ, where the bracket equals −h(θ),
    h(θ) = θ²σ²/2 + 2μ(θ sinh θ − cosh θ + 1). Capped at ln 1 = 0.
    """
    _check_tail_args(sigma2, mu)
    if t <= 0:
        return 0.0
    hi = t / sigma2 if sigma2 > 0 else math.asinh(t / (2 * mu))
    if mu > 0:
        hi = min(hi, math.asinh(t / (2 * mu)))
    lo = 0.0
    for _ in range(200):  # t(θ) = θσ² + 2μ sinh θ is increasing: bisect for t(θ) = t
        mid = (lo + hi) / 2
        if mid * sigma2 + 2 * mu * math.sinh(mid) < t:
            lo = mid
        else:
            hi = mid
    theta = lo  # t(lo) <= t: the exponent at lo is a valid (slightly weaker) Chernoff bound
    exponent = -theta * t + theta * theta * sigma2 / 2 + (2 * mu * (math.cosh(theta) - 1) if mu else 0.0)
    return min(0.0, math.log(2) + exponent)


def tail_quantile(sigma2: float, mu: float, p: float) -> float:
    """The t at which :func:`tail_log_bound` reaches ln p, for A + N as there:
    P(|A + N| >= t) <= p. Solves h(θ) = ln(2/p) by bisection (h increases; h(θ) >=
    θ²(σ² + 2μ)/2 brackets the root), then t = θσ² + 2μ sinh θ, rounded up at the last
    bisection step (a larger t only loosens the statement)."""
    _check_tail_args(sigma2, mu)
    _check_open_unit("p", p)
    target = math.log(2 / p)
    lo, hi = 0.0, math.sqrt(2 * target / (sigma2 + 2 * mu))
    for _ in range(200):
        mid = (lo + hi) / 2
        if _log_decay(mid, sigma2, mu) < target:
            lo = mid
        else:
            hi = mid
    return hi * sigma2 + 2 * mu * math.sinh(hi)


# --- parameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SkellamParams:
    """The Skellam mechanism's parameters, the same at the server and every client (chosen in
    preflight by :func:`skellam_params`; integer units are the ring's).

    ``dim`` d, ``padded_dim`` d' (power of two), ``clip`` S, ``noise_multiplier`` z,
    ``planned`` m (each client adds Sk(mu/planned)), ``modulus_bits`` b, ``gamma`` γ,
    ``beta`` β of the conditional rounding; ``l2_sensitivity`` Δ2 (KLS21, Thm. 1; enforced
    by :func:`conditional_round`), ``l1_sensitivity`` Δ1 = min(Δ2², √d'·Δ2); ``mu`` the
    full cohort's μ = (γzS)²/2; ``wrap_probability`` p: for any s <= ``max_parties``
    honest inputs (fixed independently of the rotation signs), each coordinate of their
    sum leaves [−honest_bound(s), honest_bound(s)] with probability <= p, and
    2^guard_bits·honest_bound(max_parties) <= 2^(b−1) − 1, so p also bounds the wrap
    (:meth:`log10_wrap_bound` gives the far smaller bound on the wrap itself).
    ``guard_bits`` g, ``max_parties`` the largest cohort the ring is sized for (>= m; 0 or
    absent: m).
    """

    dim: int
    padded_dim: int
    clip: float
    noise_multiplier: float
    planned: int
    modulus_bits: int
    gamma: float
    beta: float
    l2_sensitivity: float
    l1_sensitivity: float
    mu: float
    wrap_probability: float
    guard_bits: int = DEFAULT_GUARD_BITS
    max_parties: int = 0

    def __post_init__(self) -> None:
        _check_int("planned", self.planned, 1, 2**40)
        if self.max_parties == 0:  # not given: the ring is sized for the planned cohort
            object.__setattr__(self, "max_parties", self.planned)
        _check_int("max_parties", self.max_parties, self.planned, 2**40)

    def realized_mu(self, survivors: int) -> float:
        """μ of the released sum of ``survivors`` shares: s·μ/m (Sk(μ/m) each, AKL21 Sec. 3)."""
        _check_int("survivors", survivors, 0, 2**62)
        return survivors * self.mu / self.planned

    @property
    def scaled_clip(self) -> float:
        """c = γS, the norm bound of a scaled, rotated update in integer units."""
        return self.gamma * self.clip

    @property
    def rounding_inflation(self) -> float:
        """Δ2/(γS): how much the rounding inflates the sensitivity (the accountant's noise
        multiplier is z over this)."""
        return self.l2_sensitivity / self.scaled_clip

    def _sum_moments(self, survivors: int) -> tuple[float, float]:
        """(σ², μ_s) of a coordinate of s inputs' rotated sum: the sub-Gaussian proxy
        (s·γS)²/d' (Hoeffding over the Rademacher signs of D: the coordinate is
        Σ_k ±γX_k/√d' with ‖X‖₂ <= sS) and the noise Sk(s·μ/m)."""
        _check_int("survivors", survivors, 1, 2**62)
        return (survivors * self.scaled_clip) ** 2 / self.padded_dim, self.realized_mu(survivors)

    def honest_bound(self, survivors: int) -> float:
        """The bound B(s) on |coordinate| of the integer sum of s honest shares, exceeded with
        probability <= ``wrap_probability``: B(s) = 2s + tail_quantile(σ², μ_s, p), with 2 per
        client for the rounding (< 1) and the rotation's floating-point error and final
        rescale (< 1, for γS <= 2^25 and d' <= 2^24)."""
        sigma2, mu = self._sum_moments(survivors)
        return 2 * survivors + tail_quantile(sigma2, mu, self.wrap_probability)

    def log10_wrap_bound(self, survivors: int | None = None) -> float:
        """log10 of a bound on P(one coordinate of the honest sum of ``survivors`` shares
        (default ``max_parties``) wraps): P(|A + N| >= 2^(b−1) − 2s) (:func:`tail_log_bound`)."""
        s = self.max_parties if survivors is None else survivors
        sigma2, mu = self._sum_moments(s)
        return tail_log_bound(2.0 ** (self.modulus_bits - 1) - 2 * s, sigma2, mu) / math.log(10)


def skellam_params(
    dim: int,
    clip: float,
    noise_multiplier: float,
    planned: int,
    modulus_bits: int = 32,
    *,
    beta: float = DEFAULT_BETA,
    max_wrap_probability: float = DEFAULT_MAX_WRAP_PROBABILITY,
    guard_bits: int = DEFAULT_GUARD_BITS,
    max_parties: int | None = None,
    max_rounding_inflation: float = DEFAULT_MAX_ROUNDING_INFLATION,
    gamma: float | None = None,
) -> SkellamParams:
    """Choose γ as large as the ring allows and derive Δ2, Δ1, μ (AKL21, Alg. 1 and its choice
    of the scale: larger γ, less rounding inflation, up to what the modulus holds).

    γ is the largest value with 2^g·B(n) <= 2^(b−1) − 1 (g = ``guard_bits``, n =
    ``max_parties``, default ``planned``; B from :meth:`SkellamParams.honest_bound` at p =
    ``max_wrap_probability``), found by bisection (B increases with γ), and at most
    min(2^25/S, √(2m·2^48)/(zS)) (:data:`MAX_SCALED_CLIP`, :data:`MAX_SHARE_MU`).
    ``noise_multiplier`` z = 0 gives μ = 0 (no noise: not DP; for control runs).
    ValueError, naming the field and its allowed range, for an invalid argument, when not
    even 2n fits (the rounding alone), or when the chosen γ leaves Δ2/(γS) >
    ``max_rounding_inflation`` (the ring is too small for this z, cohort and dim).

    ``gamma``: use this scale instead of choosing one (e.g. the one chosen for the largest
    cohort, so that γ, and with it the lattice of the decoded sum, does not depend on the
    cohort's size); ValueError when it exceeds the caps or the honest sum of ``max_parties``
    would not fit.
    """
    d_padded = padded_dim(dim)
    _check_positive("clip", clip)
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) or not (
        math.isfinite(noise_multiplier) and noise_multiplier >= 0
    ):
        raise ValueError(f"noise_multiplier={noise_multiplier!r} is invalid: expected a finite number >= 0")
    _check_int("planned", planned, 1, 2**40)
    if modulus_bits not in SUPPORTED_MODULUS_BITS:
        raise ValueError(f"modulus_bits={modulus_bits!r} is invalid: expected one of {SUPPORTED_MODULUS_BITS}")
    _check_open_unit("beta", beta)
    _check_open_unit("max_wrap_probability", max_wrap_probability)
    _check_int("guard_bits", guard_bits, 0, 16)
    parties = planned if max_parties is None else max_parties
    _check_int("max_parties", parties, planned, 2**40)
    if not (isinstance(max_rounding_inflation, (int, float)) and 1 < max_rounding_inflation < math.inf):
        raise ValueError(f"max_rounding_inflation={max_rounding_inflation!r} is invalid: expected a number in (1, inf)")
    clip, z = float(clip), float(noise_multiplier)
    limit = (2.0 ** (modulus_bits - 1) - 1) / 2.0**guard_bits

    def params(gamma: float) -> SkellamParams:
        c = gamma * clip
        l2 = rounded_l2_bound(c, d_padded, beta)
        return SkellamParams(
            dim=dim, padded_dim=d_padded, clip=clip, noise_multiplier=z, planned=planned,
            modulus_bits=modulus_bits, gamma=gamma, beta=beta, l2_sensitivity=l2,
            l1_sensitivity=l1_sensitivity(l2, d_padded), mu=(c * z) ** 2 / 2,
            wrap_probability=max_wrap_probability, guard_bits=guard_bits, max_parties=parties,
        )  # fmt: skip

    def fits(gamma: float) -> bool:
        return params(gamma).honest_bound(parties) <= limit

    where = f"modulus_bits={modulus_bits} with guard_bits={guard_bits}, planned={planned}, max_parties={parties}"
    if 2 * parties >= limit:
        raise ValueError(f"{where}: the rounding alone needs 2·max_parties < {limit:.6g}; lower planned or use modulus_bits=64")
    cap = MAX_SCALED_CLIP / clip
    if z > 0:
        cap = min(cap, math.sqrt(2 * planned * MAX_SHARE_MU) / (z * clip))
    if gamma is not None:
        _check_positive("gamma", gamma)
        if gamma > cap * (1 + 1e-12) or not fits(gamma):
            raise ValueError(f"gamma={gamma!r} is invalid: {where} holds at most γ={cap:.6g} and an honest sum that fits the ring")
    elif fits(cap):
        gamma = cap
    else:
        lo = cap
        while not fits(lo):
            lo /= 2
            if lo * clip < 2.0**-40:
                raise ValueError(f"{where}: no scale γ > 0 fits the honest sum into the ring")
        hi = lo * 2
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        gamma = lo
    chosen = params(gamma)
    if chosen.rounding_inflation > max_rounding_inflation:
        raise ValueError(
            f"{where} leaves γ={gamma:.6g} for noise_multiplier={z}, clip={clip}, dim={dim} (padded {d_padded}): "
            f"the rounding inflates the sensitivity by Δ2/(γS)={chosen.rounding_inflation:.6g}, allowed <= "
            f"{max_rounding_inflation}; use modulus_bits=64, or a smaller noise_multiplier, cohort or dim"
        )
    logger.debug("skellam params: %s", chosen)
    return chosen


# --- the codec ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkellamCodec:
    """One client's encoder and the server's decoder for the distributed Skellam mechanism
    (AKL21, Alg. 1; module docstring)."""

    params: SkellamParams

    def __post_init__(self) -> None:
        p = self.params
        if not isinstance(p, SkellamParams):
            raise ValueError(f"params must be a SkellamParams, got {type(p).__name__}")
        if p.scaled_clip > MAX_SCALED_CLIP * (1 + 1e-12):
            raise ValueError(f"gamma*clip={p.scaled_clip:.6g} is invalid: expected <= {MAX_SCALED_CLIP:.6g}")
        if p.l2_sensitivity < p.scaled_clip:
            raise ValueError(f"l2_sensitivity={p.l2_sensitivity!r} is invalid: expected >= gamma*clip={p.scaled_clip!r}")

    def rounded_input(self, update: torch.Tensor, rotation_seed: bytes, rng: np.random.Generator) -> np.ndarray:
        """Steps 1–3 for one update: clip to S, scale by γ, pad, rotate, rescale to norm
        <= γS·(1 − 2^-28) (absorbs the float error), round conditionally: int64 of length d'
        with ‖·‖₂ <= Δ2, for any finite input. ValueError for a wrong type, length or a
        NaN/inf entry."""
        p = self.params
        x = _update_array(update, p.dim)
        _check_rng(rng)
        signs = rotation_signs(rotation_seed, p.padded_dim)
        padded = np.zeros(p.padded_dim)
        padded[: p.dim] = clip_to_norm(x, p.clip)
        padded *= p.gamma
        y = rotate(padded, signs)
        target = p.scaled_clip * (1 - _NORM_MARGIN)
        norm = _l2_norm(y)
        if norm > target:
            y *= target / norm
        return conditional_round(y, p.l2_sensitivity, rng)

    def encode(self, update: torch.Tensor, rotation_seed: bytes, rng: np.random.Generator) -> np.ndarray:
        """The ring vector (uint32/uint64, length d') one client masks: its rounded input
        (:meth:`rounded_input`) plus Sk(μ/m) noise, mod 2^b with no clipping."""
        p = self.params
        rounded = self.rounded_input(update, rotation_seed, rng)
        rounded += skellam_noise(p.padded_dim, p.mu / p.planned, rng)
        return to_ring(rounded, p.modulus_bits)

    def _checked_sum(self, ring_sum: np.ndarray, survivors: int) -> np.ndarray:
        _check_int("survivors", survivors, 1, 2**62)
        values = centred(ring_sum, self.params.modulus_bits)
        if values.shape != (self.params.padded_dim,):
            raise ValueError(f"ring_sum must have shape ({self.params.padded_dim},), got {values.shape}")
        return values

    def decode_sum(self, ring_sum: np.ndarray, survivors: int, rotation_seed: bytes) -> torch.Tensor:
        """The sum of the ``survivors`` updates plus their noise, float32 of length d: the
        centred ring sum, rotated back with the sum's ``rotation_seed`` (the clients' D),
        divided by γ, truncated to d."""
        values = self._checked_sum(ring_sum, survivors)
        if survivors > self.params.max_parties:
            logger.warning("decoding a sum of %d shares: the ring was sized for %d", survivors, self.params.max_parties)
        signs = rotation_signs(rotation_seed, self.params.padded_dim)
        decoded = unrotate(values.astype(np.float64), signs)[: self.params.dim] / self.params.gamma
        return torch.from_numpy(decoded.astype(np.float32))

    def out_of_range(self, ring_sum: np.ndarray, survivors: int) -> int:
        """How many coordinates of the centred ring sum exceed the honest bound B(s)
        (:meth:`SkellamParams.honest_bound`): 0 for an honest sum except with probability
        <= ``wrap_probability`` per coordinate. 0 when B(s) spans the ring (no check)."""
        values = self._checked_sum(ring_sum, survivors)
        bound = self.params.honest_bound(survivors)
        if bound >= 2.0 ** (self.params.modulus_bits - 1) - 1:
            return 0
        limit = int(bound)
        return int(np.count_nonzero((values > limit) | (values < -limit)))


# --- validation helpers ---------------------------------------------------------------------


def _update_array(update: torch.Tensor, dim: int) -> np.ndarray:
    if not isinstance(update, torch.Tensor) or not update.is_floating_point():
        got = update.dtype if isinstance(update, torch.Tensor) else type(update).__name__
        raise ValueError(f"update must be a floating-point torch.Tensor, got {got}")
    if update.numel() != dim:
        raise ValueError(f"update must have {dim} values, got {update.numel()}")
    x = update.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(x).all():
        raise ValueError("update must contain only finite values (found NaN or inf)")
    return x


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (over a CSPRNG), got {type(rng).__name__}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer in [{lo}, {hi}]")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} is invalid: expected a finite number > 0")


def _check_open_unit(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected a number in (0, 1)")
