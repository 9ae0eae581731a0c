"""Shamir t-of-n secret sharing of 32-byte keys over the prime field GF(2^31 - 1).

Bonawitz et al., CCS 2017, Sec. 3 ("Secret sharing") and Fig. 4 (Round 1, ShareKeys):
SS.share(s, t, U) gives each party v in U the value f(x_v) of a random polynomial f of
degree t - 1 with f(0) = s; any t shares determine s by Lagrange interpolation at 0,
and any t - 1 shares are independent of s (perfect secrecy).

A secret is a 256-bit key.  It is split into nine 30-bit limbs and each limb is shared
with its own independent random polynomial over GF(p), p = 2^31 - 1 (a Mersenne
prime): Shamir sharing over the vector space GF(p)^9, with the same perfect secrecy
per limb and so for the whole key.  The small prime keeps every product below 2^62,
so sharing and reconstruction are vectorised numpy uint64 arithmetic (a Python-int
field such as GF(2^521 - 1) costs ~1 us per multiplication: minutes at n = 1000).
Coefficients come from ``os.urandom`` with rejection sampling (exactly uniform),
never from a numpy/torch generator.

Lagrange coefficients depend only on the set of share holders, so
:class:`LagrangeCache` computes them once per set (the server reconstructs hundreds of
secrets from the same survivors).

Robust reconstruction (:func:`robust_reconstruct`), for shares that may be wrong (a
holder that alters what it reveals, a dealer that deals inconsistent shares): given a
check of the secret (a hash commitment, a public key), it accepts only a candidate that
passes the check and reports which shares lie off the accepted polynomial.  It first
decodes with Berlekamp-Welch (Welch and Berlekamp, US patent 4,633,470, 1986; e.g.
Gemmell and Sudan, "Highly resilient correctors for polynomials", IPL 1992): with h
shares of a polynomial f of degree < t, find a monic error locator E of degree
e = floor((h - t) / 2) and Q of degree < t + e with Q(x_i) = y_i E(x_i) for every i,
one linear system over GF(p) (:func:`solve_mod_p`, Gaussian elimination); then
f = Q / E, whatever the positions of up to e wrong shares.  The nine limbs share the
error positions (a wrong share is one holder's), so the system is solved once, for a
random GF(p)-linear combination of the limbs (drawn after the shares are fixed: a
wrong share stays wrong in the combination except with probability 1/p); all limbs
are then interpolated from t shares on the decoded polynomial.  When h < t + 2 (no
error to correct) or the decoding fails, it tries leaving out one share at a time.
Cost: O(h^3) field operations for the decoding, on the failure path only.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "LIMBS",
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "LagrangeCache",
    "RobustResult",
    "berlekamp_welch",
    "evaluate_polynomial",
    "evaluation_points",
    "interpolate_at",
    "join_limbs",
    "lagrange_at_zero",
    "lagrange_basis_at",
    "random_field_elements",
    "reconstruct",
    "robust_reconstruct",
    "share_from_bytes",
    "share_secrets",
    "share_to_bytes",
    "shares_from_bytes",
    "solve_mod_p",
    "split_limbs",
]

PRIME: int = 2**31 - 1
"""The field modulus p (a Mersenne prime)."""

SECRET_BYTES: int = 32
"""A shared secret is a 256-bit key."""

LIMB_BITS: int = 30
"""Bits per limb: < log2(p), so every limb is a field element."""

LIMBS: int = -(-8 * SECRET_BYTES // LIMB_BITS)
"""Limbs per secret (9)."""

SHARE_BYTES: int = 4 * LIMBS
"""Bytes of one share of one secret: LIMBS little-endian u32 field elements (36)."""

_P = np.uint64(PRIME)


def split_limbs(secret: bytes) -> np.ndarray:
    """The 32-byte secret as LIMBS field elements (30 bits each, little-endian order)."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
        got = len(secret) if isinstance(secret, (bytes, bytearray)) else type(secret).__name__
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {got}")
    value = int.from_bytes(secret, "little")
    mask = (1 << LIMB_BITS) - 1
    return np.array([(value >> (LIMB_BITS * i)) & mask for i in range(LIMBS)], dtype=np.uint64)


def join_limbs(limbs: np.ndarray) -> bytes:
    """Inverse of :func:`split_limbs`; ValueError if the limbs encode no 32-byte secret
    (what a reconstruction from wrong or forged shares usually gives)."""
    value = 0
    for i, limb in enumerate(int(v) for v in limbs):
        if limb >> LIMB_BITS:
            raise ValueError(f"limb {i} = {limb} does not fit {LIMB_BITS} bits: inconsistent shares")
        value |= limb << (LIMB_BITS * i)
    if value >> (8 * SECRET_BYTES):
        raise ValueError(f"reconstructed value exceeds {8 * SECRET_BYTES} bits: inconsistent shares")
    return value.to_bytes(SECRET_BYTES, "little")


def evaluation_points(client_ids: Sequence[int], parties: Iterable[int]) -> list[int]:
    """x_v = 1 + (position of v in the sorted cohort ``client_ids``) for each v of
    ``parties``: distinct, non-zero and < p whatever the ids.  O(log n) per party."""
    if len(client_ids) >= PRIME:
        raise ValueError(f"at most {PRIME - 1} parties can share, got {len(client_ids)}")
    points = []
    for v in parties:
        i = bisect.bisect_left(client_ids, v)
        if i == len(client_ids) or client_ids[i] != v:
            raise ValueError(f"party {v} is not in the sorted cohort")
        points.append(i + 1)
    return points


def random_field_elements(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform elements of GF(p) from the OS CSPRNG (31-bit draws, rejecting p itself)."""
    count = int(np.prod(shape, dtype=np.int64))
    out = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.uint64) & _P
    bad = np.flatnonzero(out == _P)
    while bad.size:
        redraw = np.frombuffer(os.urandom(4 * bad.size), dtype="<u4").astype(np.uint64) & _P
        out[bad] = redraw
        bad = bad[redraw == _P]
    return out.reshape(shape)


def share_secrets(secrets: Sequence[bytes], xs: Sequence[int], threshold: int) -> np.ndarray:
    """SS.share of each secret among the evaluation points ``xs`` (Bonawitz et al. 2017, Sec. 3).

    Returns uint64 shares of shape (len(xs), len(secrets), LIMBS): entry [i, s] is
    f_s(xs[i]) limb-wise, where f_s has degree threshold - 1, f_s(0) = secret s and
    uniformly random other coefficients.  Points must be distinct, in [1, p).
    Horner's rule over all points and limbs at once; every product is < 2^62.
    """
    _check_points(xs)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be an int in [1, {len(xs)}], got {threshold!r}")
    constant = np.stack([split_limbs(s) for s in secrets]).reshape(-1) if secrets else np.zeros(0, np.uint64)
    coefficients = random_field_elements((threshold - 1, constant.size))
    x = np.asarray(xs, dtype=np.uint64)[:, None]
    y = np.zeros((len(xs), constant.size), dtype=np.uint64)
    for a_j in coefficients[::-1]:
        y *= x
        y += a_j
        y %= _P
    y *= x
    y += constant
    y %= _P
    return y.reshape(len(xs), len(secrets), LIMBS)


def share_to_bytes(share: np.ndarray) -> bytes:
    """One share (LIMBS field elements) as SHARE_BYTES little-endian bytes."""
    return np.ascontiguousarray(share, dtype="<u4").tobytes()


def shares_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of concatenated :func:`share_to_bytes`: shape (len(data) // SHARE_BYTES, LIMBS).

    One vectorised parse for a whole reply; ValueError on a bad length or a limb >= p.
    """
    if len(data) % SHARE_BYTES:
        raise ValueError(f"shares must be a multiple of {SHARE_BYTES} bytes, got {len(data)}")
    limbs = np.frombuffer(data, dtype="<u4").astype(np.uint64).reshape(-1, LIMBS)
    if np.any(limbs >= _P):
        raise ValueError(f"share limbs must be < p = {PRIME}")
    return limbs


def share_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of :func:`share_to_bytes`: one share of exactly SHARE_BYTES bytes."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share must be {SHARE_BYTES} bytes, got {len(data)}")
    return shares_from_bytes(data)[0]


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError(
            f"evaluation points must be distinct ints in [1, {PRIME - 1}], got {list(xs)[:8]}..."
        )


def lagrange_at_zero(xs: Sequence[int]) -> np.ndarray:
    """lambda_i = prod_{j != i} x_j / (x_j - x_i) mod p, so that f(0) = sum_i lambda_i f(x_i)
    for every polynomial f of degree < len(xs).  O(len(xs)^2) vectorised steps."""
    _check_points(xs)
    x = np.asarray(xs, dtype=np.uint64)
    numerator = np.ones_like(x)
    denominator = np.ones_like(x)
    for j, x_j in enumerate(x):
        factor = (x_j + _P - x) % _P  # x_j - x_i mod p, zero at i = j
        factor[j] = 1
        denominator = denominator * factor % _P
        others = np.full_like(x, x_j)
        others[j] = 1
        numerator = numerator * others % _P
    inverses = np.array([pow(int(d), PRIME - 2, PRIME) for d in denominator], dtype=np.uint64)
    return numerator * inverses % _P


def reconstruct(shares: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """sum_i lambda_i * shares[i] mod p, limb-wise: shares (t, ..., LIMBS) -> (..., LIMBS)."""
    if shares.shape[0] != coefficients.shape[0]:
        raise ValueError(f"need one coefficient per share, got {coefficients.shape[0]} for {shares.shape[0]}")
    weighted = shares * coefficients.reshape((-1,) + (1,) * (shares.ndim - 1)) % _P
    return weighted.sum(axis=0, dtype=np.uint64) % _P  # t * p < 2^64 for t < 2^33


class LagrangeCache:
    """Lagrange coefficients at 0 per set of evaluation points, computed once each.

    Owned by one server round (no global state).  Sharing the same survivor set
    across the ~n secrets of a round turns ~n O(t^2) computations into one.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, ...], np.ndarray] = {}
        self.misses = 0

    def coefficients(self, xs: Sequence[int]) -> np.ndarray:
        """:func:`lagrange_at_zero` of ``xs`` (as given, order matters), cached."""
        key = tuple(int(x) for x in xs)
        found = self._cache.get(key)
        if found is None:
            self.misses += 1
            found = self._cache[key] = lagrange_at_zero(key)
        return found


# --- robust reconstruction ------------------------------------------------------------------


def _inverse(value: int) -> int:
    return pow(int(value), PRIME - 2, PRIME)


def lagrange_basis_at(xs: Sequence[int], targets: Sequence[int]) -> np.ndarray:
    """lambda_i(x) = prod_{j != i} (x - x_j) / (x_i - x_j) mod p for each target x: shape
    (len(targets), len(xs)), so that f(x) = sum_i lambda_i(x) f(x_i) for deg f < len(xs).

    Barycentric weights (len(xs) inversions) and prefix/suffix products: O(len(targets)
    * len(xs)) vectorised work; a target may equal a node."""
    _check_points(xs)
    x = np.asarray(xs, dtype=np.uint64)
    t = x.size
    weights = np.ones_like(x)
    for j in range(t):
        factor = (x + _P - x[j]) % _P
        factor[j] = 1
        weights = weights * factor % _P
    weights = np.array([_inverse(w) for w in weights], dtype=np.uint64)
    target = np.asarray(targets, dtype=np.uint64) % _P
    diff = (target[:, None] + _P - x[None, :]) % _P
    prefix = np.ones((target.size, t + 1), dtype=np.uint64)
    suffix = np.ones((target.size, t + 1), dtype=np.uint64)
    for j in range(t):
        prefix[:, j + 1] = prefix[:, j] * diff[:, j] % _P
        suffix[:, t - j - 1] = suffix[:, t - j] * diff[:, t - j - 1] % _P
    return prefix[:, :t] * suffix[:, 1:] % _P * weights[None, :] % _P


def interpolate_at(xs: Sequence[int], shares: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """f(targets), limb-wise, of the polynomial of degree < len(xs) through (xs, shares):
    shares (len(xs), LIMBS) -> (len(targets), LIMBS)."""
    basis = lagrange_basis_at(xs, targets)
    return (basis[:, :, None] * (shares[None, :, :] % _P) % _P).sum(axis=1, dtype=np.uint64) % _P


def evaluate_polynomial(coefficients: Sequence[int], points: Sequence[int]) -> np.ndarray:
    """sum_j c_j x^j mod p at each point (coefficients lowest degree first), Horner's rule."""
    x = np.asarray(points, dtype=np.uint64) % _P
    acc = np.zeros_like(x)
    for c in reversed([int(c) % PRIME for c in coefficients]):
        acc = (acc * x + np.uint64(c)) % _P
    return acc


def solve_mod_p(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """One solution x of a x = b over GF(p) (free variables set to 0), or None when the
    system is inconsistent.  Gauss-Jordan elimination on uint64 rows: every product of
    two reduced elements is < 2^62.  ``a``: (m, n), ``b``: (m,)."""
    m, n = a.shape
    aug = np.empty((m, n + 1), dtype=np.uint64)
    aug[:, :n] = np.asarray(a, dtype=np.uint64) % _P
    aug[:, n] = np.asarray(b, dtype=np.uint64) % _P
    pivots: list[int] = []
    row = 0
    for col in range(n):
        if row == m:
            break
        candidates = np.flatnonzero(aug[row:, col])
        if candidates.size == 0:
            continue
        r = row + int(candidates[0])
        if r != row:
            aug[[row, r]] = aug[[r, row]]
        aug[row] = aug[row] * np.uint64(_inverse(aug[row, col])) % _P
        factors = aug[:, col].copy()
        factors[row] = 0
        aug = (aug + (_P - factors[:, None] * aug[row][None, :] % _P)) % _P
        pivots.append(col)
        row += 1
    if np.any(aug[row:, n]):
        return None
    x = np.zeros(n, dtype=np.uint64)
    for i, col in enumerate(pivots):
        x[col] = aug[i, n]
    return x


def _divide(numerator: Sequence[int], monic: Sequence[int]) -> tuple[list[int], list[int]]:
    """Quotient and remainder of two polynomials over GF(p) (lowest degree first; the
    divisor is monic)."""
    rem = [int(c) % PRIME for c in numerator]
    den = [int(c) % PRIME for c in monic]
    e = len(den) - 1
    quotient = [0] * max(0, len(rem) - e)
    for k in range(len(rem) - 1, e - 1, -1):
        coef = rem[k]
        if coef:
            quotient[k - e] = coef
            for j in range(e + 1):
                rem[k - e + j] = (rem[k - e + j] - coef * den[j]) % PRIME
    return quotient, rem[:e]


def berlekamp_welch(xs: Sequence[int], values: Sequence[int], threshold: int) -> list[int] | None:
    """The coefficients (lowest first, ``threshold`` of them) of the polynomial f of degree
    < t that agrees with all but at most e = floor((h - t) / 2) of the h pairs (x_i, y_i),
    or None when there is none (more than e errors).

    Berlekamp-Welch: solve Q(x_i) = y_i E(x_i) for Q of degree < t + e and E monic of
    degree e (one linear system over GF(p)), then f = Q / E (exact division).  Any
    solution works when at most e values are wrong: Q - f E has degree < t + e and
    vanishes at the >= t + e correct points."""
    h = len(xs)
    e = (h - threshold) // 2
    if threshold < 1 or e < 0:
        return None
    x = np.asarray(xs, dtype=np.uint64) % _P
    y = np.asarray(values, dtype=np.uint64) % _P
    powers = np.ones((h, threshold + e + 1), dtype=np.uint64)
    for j in range(1, threshold + e + 1):
        powers[:, j] = powers[:, j - 1] * x % _P
    a = np.empty((h, threshold + 2 * e), dtype=np.uint64)
    a[:, : threshold + e] = powers[:, : threshold + e]
    a[:, threshold + e :] = (_P - y[:, None] * powers[:, :e] % _P) % _P
    solution = solve_mod_p(a, y * powers[:, e] % _P)
    if solution is None:
        return None
    q = solution[: threshold + e]
    locator = [int(c) for c in solution[threshold + e :]] + [1]
    quotient, remainder = _divide(q, locator)
    if any(remainder):
        return None
    coefficients = (quotient + [0] * threshold)[:threshold]
    if np.count_nonzero(evaluate_polynomial(coefficients, xs) != y) > e:
        return None
    return coefficients


class RobustResult(NamedTuple):
    """What :func:`robust_reconstruct` accepted: ``secret`` (what the check returned),
    ``on_polynomial`` (one bool per share: on the accepted polynomial), ``method``."""

    secret: object
    on_polynomial: np.ndarray
    method: str


def robust_reconstruct(
    xs: Sequence[int],
    shares: np.ndarray,
    threshold: int,
    accept: Callable[[np.ndarray], object | None],
) -> RobustResult | None:
    """Reconstruct a secret from h >= t possibly wrong shares (module docstring).

    ``xs``: the h evaluation points; ``shares``: (h, LIMBS); ``accept(limbs)``: the
    checked secret for candidate limbs, or None to reject them.  Tries, in order, the
    first t shares, Berlekamp-Welch over all h (when h >= t + 2), and every
    leave-one-out set; returns the first candidate ``accept`` takes, with the shares off
    its polynomial marked, or None when no candidate passes.  Corrects up to
    max(floor((h - t) / 2), 1 if h > t) wrong shares.
    """
    h = len(xs)
    if h < threshold or shares.shape[0] != h:
        return None
    points = list(xs)
    tried: set[tuple[int, ...]] = set()

    def attempt(indices: Sequence[int], method: str) -> RobustResult | None:
        chosen = tuple(indices[:threshold])
        if len(chosen) < threshold or chosen in tried:
            return None
        tried.add(chosen)
        nodes = [points[i] for i in chosen]
        subset = shares[list(chosen)]
        secret = accept(reconstruct(subset, lagrange_at_zero(nodes)))
        if secret is None:
            return None
        on = np.all(interpolate_at(nodes, subset, points) == shares % _P, axis=1)
        return RobustResult(secret, on, method)

    found = attempt(range(h), "first t shares")
    if found is None and h >= threshold + 2:
        combination = random_field_elements((shares.shape[1],))
        combined = (shares % _P * combination[None, :] % _P).sum(axis=1, dtype=np.uint64) % _P
        coefficients = berlekamp_welch(points, combined, threshold)
        if coefficients is not None:
            good = np.flatnonzero(evaluate_polynomial(coefficients, points) == combined)
            found = attempt([int(i) for i in good], "Berlekamp-Welch")
    for left_out in range(min(h, threshold + 1)):
        if found is not None:
            break
        found = attempt([i for i in range(h) if i != left_out], "leave one out")
    return found
