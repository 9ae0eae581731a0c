"""The one-run audit's ε lower bound (Steinke, Nasr, Jagielski 2023, Thm. 3) against a brute-force binomial,
and the attack on the bound itself: randomized response at a known ε must not be "proved" above it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.audit.bound import (
    GUESS_FRACTIONS,
    audit_bound,
    epsilon_lower_bound,
    guess,
    guess_sizes,
    p_value,
    response_accuracy,
)


def brute_tail(r: int, v: int, q: float) -> float:
    """P[Binomial(r, q) >= v] by summing the pmf term by term."""
    return sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(v, 0), r + 1))


def brute_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Thm. 3 written out: f(v) + 2 m δ max_{i in 1..m} (f(v - i) - f(v)) / i, every i up to m."""
    q = math.exp(eps) / (1 + math.exp(eps))
    tails = [brute_tail(r, x, q) for x in range(r + 1)]
    f = lambda x: 1.0 if x <= 0 else tails[x]
    return min(1.0, f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, m + 1)))


@pytest.mark.parametrize(
    "m, r, v, eps, delta",
    [(60, 40, 35, 1.5, 1e-5), (60, 40, 35, 1.5, 0.0), (30, 30, 30, 3.0, 1e-3), (50, 20, 11, 0.2, 1e-2), (40, 10, 0, 1.0, 1e-4), (80, 60, 59, 4.0, 1e-5)],
)
def test_p_value_matches_the_brute_force_binomial(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(brute_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("m, r, v, delta", [(60, 40, 36, 1e-5), (60, 40, 36, 0.0), (100, 50, 48, 1e-4), (60, 20, 11, 0.0)])
def test_the_lower_bound_is_the_largest_epsilon_the_brute_force_rejects(m, r, v, delta):
    beta, step = 0.05, 0.01
    grid = np.arange(0.0, 6.0, step)
    rejected = [eps for eps in grid if brute_p_value(m, r, v, eps, delta) < beta]
    expected = max(rejected) if rejected else 0.0
    got = epsilon_lower_bound(m, r, v, delta, beta)
    assert expected <= got + 1e-9 and got < expected + step
    assert got == 0.0 or p_value(m, r, v, got, delta) < beta


def test_all_guesses_right_without_delta_has_the_closed_form():
    """v = r, δ = 0: q^r = β, so ε = log(q / (1 - q)) with q = β^(1/r)."""
    for r in (10, 100, 1000):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, r, 0.0, 0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-9)


def test_delta_only_lowers_the_bound_and_more_correct_guesses_raise_it():
    assert epsilon_lower_bound(1000, 200, 190, 1e-5) < epsilon_lower_bound(1000, 200, 190, 0.0)
    bounds = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in range(100, 201, 10)]
    assert bounds == sorted(bounds) and bounds[0] == 0.0 and bounds[-1] > 3


def test_guess_takes_the_top_scores_in_and_the_bottom_out():
    scores = np.array([5.0, -3.0, 4.0, 0.0, -2.0, 1.0])
    members = np.array([True, False, False, True, False, True])
    g = guess(scores, members, 2, 2, np.random.default_rng(0))  # in: 5, 4 (one right); out: -3, -2 (both right)
    assert (g.k_plus, g.k_minus, g.correct, g.count) == (2, 2, 3, 4)
    assert guess_sizes(1000) == [(10, 10), (25, 25), (50, 50), (100, 100), (250, 250), (500, 500)]
    assert len(guess_sizes(1000)) == len(GUESS_FRACTIONS)


def test_ties_carry_no_order():
    """Every score equal: the guesses are random, so about half right whatever the index order."""
    members = np.arange(2000) < 1000  # members first: an index-order tie-break would be all right or all wrong
    g = guess(np.zeros(2000), members, 500, 500, np.random.default_rng(1))
    assert 400 < g.correct < 600


def randomized_response(members: np.ndarray, epsilon: float, rng: np.random.Generator, delta: float = 0.0) -> np.ndarray:
    """An (ε, δ)-DP release of each membership bit: the bit itself w.p. δ, else ε-randomized response; scored ±1 plus noise for ties."""
    keep = rng.random(len(members)) < response_accuracy(epsilon)
    said = np.where(keep | (rng.random(len(members)) < delta), members, ~members)
    return np.where(said, 1.0, -1.0) + 0.01 * rng.random(len(members))


@pytest.mark.parametrize("epsilon, delta", [(1.0, 0.0), (2.0, 1e-3)])
def test_randomized_response_at_a_known_epsilon_is_not_proved_above_it(epsilon, delta):
    """The attack on the bound: the best possible guesses against an (ε, δ)-DP release must exceed ε in
    at most 5% of runs (95% confidence); the Bonferroni split over guess sizes keeps it so."""
    rng = np.random.default_rng(2)
    trials, above, bounds = 25, 0, []
    for _ in range(trials):
        members = rng.random(1000) < 0.5
        result = audit_bound(randomized_response(members, epsilon, rng, delta), members, delta, rng=rng)
        above += result.epsilon > epsilon
        bounds.append(result.epsilon)
    assert above <= 0.05 * trials + 2
    assert np.median(bounds) > (0.5 * epsilon if delta == 0 else 0.1)  # and the audit has power: it is not vacuous
