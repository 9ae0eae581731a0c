"""The one-run audit's statistics: guesses from canary scores, and the ε they prove.

Steinke, Nasr & Jagielski (NeurIPS 2023), "Privacy Auditing with One (1) Training Run":
m canaries are each included independently with probability ½ (the secret S ∈ {−1, +1}^m);
from what the algorithm released the auditor guesses T ∈ {−1, 0, +1}^m (0: abstain), with
r = ‖T‖₁ guesses fixed in advance. If the algorithm is (ε, δ)-DP with respect to each
canary's inclusion, the number W of correct guesses satisfies (their Theorem 3, the main
theorem, for (ε, δ)-DP; δ = 0 is their Theorem 1's randomized-response domination)

    P[W ≥ v] ≤ f(v) + 2mδ · max_{i ∈ {1..m}} (f(v − i) − f(v)) / i,
    f(v) := P[Binomial(r, e^ε / (1 + e^ε)) ≥ v].

Observing v correct guesses, every ε whose right-hand side is below β is rejected at
confidence 1 − β; the empirical lower bound is the largest rejected ε (their Algorithm 2,
"auditor's lower bound", a bisection: the right-hand side grows with ε).

Choosing how many guesses to make after seeing the scores would void that confidence. The
paper sweeps (k₊, k₋) and reports the best; here the sweep is a fixed grid of
:data:`GUESS_FRACTIONS` (fractions of m, half guessed "in" from the top scores, half "out"
from the bottom) and each candidate is tested at β / (grid size) — a Bonferroni union bound,
so the reported maximum holds at the stated confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "GUESS_FRACTIONS",
    "AuditBound",
    "Guesses",
    "audit_bound",
    "binomial_tail",
    "epsilon_lower_bound",
    "guess",
    "guess_sizes",
    "p_value",
    "response_accuracy",
]

GUESS_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""The numbers of guesses tried, as fractions of the canaries (k₊ = k₋ = half of each)."""

EPSILON_CAP = 100.0
"""Bisection ceiling: no audit with fewer than ~10^40 canaries can prove more."""

_BISECTION_STEPS = 40


def response_accuracy(epsilon: float) -> float:
    """e^ε / (1 + e^ε): the accuracy of ε-DP randomized response, the best any ε-DP guess has
    (Steinke et al. 2023, Theorem 1)."""
    return 1.0 / (1.0 + math.exp(-epsilon))


def binomial_tail(r: int, v: int, p: float) -> float:
    """P[Binomial(r, p) ≥ v] (1 for v ≤ 0, 0 for v > r)."""
    if v <= 0:
        return 1.0
    if v > r:
        return 0.0
    return float(stats.binom.sf(v - 1, r, p))


def _check_counts(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}={value!r} is invalid: expected an integer")
    if not 0 <= v <= r <= m:
        raise ValueError(f"(m, r, v)={(m, r, v)!r} is invalid: expected 0 <= v (correct) <= r (guesses) <= m (canaries)")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The bound on P[W ≥ v] for an (ε, δ)-DP algorithm (Steinke et al. 2023, Theorem 3), capped at 1.

    ``m`` canaries, ``r`` guesses, ``v`` correct. The max over i runs to v only: for i ≥ v,
    f(v − i) = 1 and (1 − f(v)) / i decreases in i.
    """
    _check_counts(m, r, v)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon={epsilon!r} is invalid: expected a finite number >= 0")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta={delta!r} is invalid: expected a number in [0, 1]")
    q = response_accuracy(epsilon)
    tail = binomial_tail(r, v, q)
    if v == 0 or delta == 0.0:
        return min(1.0, tail)
    # f(v - i) - f(v) = P[v - i <= Binomial < v] for i = 1..v: cumulative pmf below v.
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """The largest ε that ``v`` correct of ``r`` guesses on ``m`` canaries reject at level ``beta``.

    Every ε' ≤ the returned value has :func:`p_value` < ``beta`` (to bisection precision,
    rounded down); 0 when even ε = 0 is not rejected. Steinke et al. 2023, Algorithm 2.
    """
    _check_counts(m, r, v)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta={beta!r} is invalid: expected a number in (0, 1) (1 - confidence)")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, 2.0 * high
        if high > EPSILON_CAP:
            return EPSILON_CAP
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class Guesses:
    """``k_plus`` canaries guessed in (top scores), ``k_minus`` out (bottom), ``correct`` of them right."""

    k_plus: int
    k_minus: int
    correct: int

    @property
    def count(self) -> int:
        """r: the guesses made (the rest abstain)."""
        return self.k_plus + self.k_minus

    def to_dict(self) -> dict[str, int]:
        return {"k_plus": self.k_plus, "k_minus": self.k_minus, "guesses": self.count, "correct": self.correct}


def guess(scores: np.ndarray, members: np.ndarray, k_plus: int, k_minus: int, rng: np.random.Generator) -> Guesses:
    """Guess the ``k_plus`` highest scores in, the ``k_minus`` lowest out; count the correct guesses.

    Ties are broken by ``rng`` (independent of the membership), so equal scores carry no order
    that could correlate with it.
    """
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(members, dtype=bool)
    m = len(scores)
    if members.shape != scores.shape or scores.ndim != 1:
        raise ValueError(f"scores and members must be 1-D of one length, got {scores.shape} and {members.shape}")
    if not (0 <= k_plus and 0 <= k_minus and k_plus + k_minus <= m):
        raise ValueError(f"(k_plus, k_minus)={(k_plus, k_minus)!r} is invalid: expected k_plus + k_minus <= m={m}")
    order = np.lexsort((rng.random(m), scores))  # ascending score, random among ties
    outs, ins = order[:k_minus], order[m - k_plus:]
    return Guesses(k_plus, k_minus, int(members[ins].sum() + (~members[outs]).sum()))


def guess_sizes(m: int, fractions: Sequence[float] = GUESS_FRACTIONS) -> list[tuple[int, int]]:
    """The distinct (k₊, k₋) tried for ``m`` canaries: k₊ = k₋ = ⌊f·m / 2⌋ (at least 1)."""
    if m < 2:
        raise ValueError(f"canaries={m!r} is invalid: expected at least 2")
    if not fractions:
        raise ValueError("fractions=() is invalid: expected at least one fraction in (0, 1]")
    sizes = []
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction={fraction!r} is invalid: expected a number in (0, 1]")
        k = max(1, int(fraction * m) // 2)
        if (k, k) not in sizes:
            sizes.append((k, k))
    return sizes


@dataclass(frozen=True)
class AuditBound:
    """The empirical lower bound ``epsilon`` at ``confidence``, and the guesses that proved it."""

    epsilon: float
    guesses: Guesses
    canaries: int
    delta: float
    confidence: float
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "empirical_epsilon_lower": self.epsilon,
            "guesses": self.guesses.to_dict(),
            "canaries": self.canaries,
            "delta": self.delta,
            "confidence": self.confidence,
            "guess_sizes_tried": self.candidates,
        }


def audit_bound(
    scores: np.ndarray,
    members: np.ndarray,
    delta: float,
    *,
    confidence: float = 0.95,
    fractions: Sequence[float] = GUESS_FRACTIONS,
    rng: np.random.Generator | None = None,
) -> AuditBound:
    """The best ε lower bound over the guess sizes of ``fractions``, each tested at (1 − confidence) / count.

    The Bonferroni split makes the maximum valid at ``confidence``. Ties in the maximum go to
    the fewer guesses.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is invalid: expected a number in (0, 1)")
    m = len(scores)
    sizes = guess_sizes(m, fractions)
    beta = (1.0 - confidence) / len(sizes)
    rng = np.random.default_rng() if rng is None else rng
    tried = []
    for k_plus, k_minus in sizes:
        guesses = guess(scores, members, k_plus, k_minus, rng)
        tried.append((epsilon_lower_bound(m, guesses.count, guesses.correct, delta, beta), -guesses.count, guesses))
    epsilon, _, guesses = max(tried, key=lambda t: (t[0], t[1]))
    return AuditBound(epsilon, guesses, m, delta, confidence, len(sizes))
