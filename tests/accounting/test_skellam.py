"""The distributed-Skellam accountant (accounting.skellam) and its per-adversary client-level
budgets (accounting.budget), each checked against a computation written here independently:
the exact Rényi divergence of two shifted 1-D Skellam distributions (scipy's pmf), the
Gaussian mechanism's RDP at large μ, Zhu & Wang's bound evaluated term by term, and
Mironov et al.'s exact subsampled-Gaussian RDP.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import skellam

from accounting import (
    SKELLAM_ORDERS,
    BudgetTracker,
    DistributedSkellam,
    LedgerRecord,
    PoissonSubsampledGaussian,
    budget_history,
    budget_snapshot,
    poisson_subsampled_rdp,
    skellam_epsilon,
    skellam_rdp,
    skellam_rdp_curve,
)
from accounting.rdp import per_step_rdp, rdp_to_epsilon, subsampled_gaussian_rdp
from accounting.skellam import compose_curves

DELTA = 1e-5
ORDERS = np.array(SKELLAM_ORDERS, dtype=float)


def exact_shifted_skellam_rdp(mu: float, shift: int, order: int) -> float:
    """D_alpha(Sk(mu) + shift || Sk(mu)) = 1/(alpha-1) log sum_k p(k-shift)^alpha p(k)^(1-alpha),
    summed over the integers where scipy's log-pmf is finite (the terms beyond are checked
    to be negligible)."""
    half_width = int(shift + 60 * math.sqrt(2 * mu) + 200)
    k = np.arange(-half_width, half_width + 1)
    log_p = skellam.logpmf(k, mu, mu)
    log_p_shifted = skellam.logpmf(k - shift, mu, mu)
    finite = np.isfinite(log_p) & np.isfinite(log_p_shifted)
    terms = order * log_p_shifted[finite] + (1 - order) * log_p[finite]
    total = logsumexp(terms)
    assert terms[0] < total - 30 and terms[-1] < total - 30, "support truncated where terms still matter"
    return float(total / (order - 1))


# ------------------------------------------------------------------- one release, 1-D


@pytest.mark.parametrize(("mu", "shift", "factor"), [(2.0, 1, 3.0), (20.0, 3, 1.6), (200.0, 10, 1.15)])
def test_rdp_bound_holds_against_the_exact_divergence_of_shifted_skellams(mu: float, shift: int, factor: float) -> None:
    """A 1-D shift by an integer Δ has Δ1 = Δ2 = Δ. The bound must never be below the
    exact divergence, and is not absurdly above it: within ``factor`` up to order 32
    (measured: at most 2.98x at μ=2, Δ=1; 1.55x at μ=20, Δ=3; 1.12x at μ=200, Δ=10, the
    gap growing with the order and shrinking as μ/Δ² grows)."""
    for order in (2, 3, 5, 8, 16, 32):
        exact = exact_shifted_skellam_rdp(mu, shift, order)
        bound = skellam_rdp(mu, shift, shift, order)
        assert exact <= bound, (order, exact, bound)
        assert bound <= factor * exact, (order, exact, bound)


def test_curve_is_the_scalar_bound_at_every_order() -> None:
    curve = skellam_rdp_curve(37.5, 40.0, 9.0)
    assert curve.shape == (len(SKELLAM_ORDERS),)
    for index in (0, 1, 10, 100, len(SKELLAM_ORDERS) - 1):
        assert curve[index] == pytest.approx(skellam_rdp(37.5, 40.0, 9.0, SKELLAM_ORDERS[index]), rel=1e-15)
    with pytest.raises(ValueError, match="mu must be a finite number > 0"):
        skellam_rdp(0.0, 1.0, 1.0, 2)
    with pytest.raises(ValueError, match="order must be an integer >= 2"):
        skellam_rdp(1.0, 1.0, 1.0, 2.5)
    with pytest.raises(ValueError, match="orders must be the integers 2, 3, ..., A"):
        skellam_rdp_curve(1.0, 1.0, 1.0, orders=(2, 4, 8))


def test_at_large_mu_skellam_epsilon_approaches_the_gaussian_mechanisms() -> None:
    """Scale the sensitivity by s at fixed σ² = 2μ/Δ2² = 1: the Skellam ε (its RDP bound,
    50 releases) falls towards the Gaussian mechanism's ε by the same conversion, and
    stays above it; ahead of the conversion the Gaussian RDP is accounting.rdp's."""
    gaussian_curve = per_step_rdp(1.0, 1.0, ORDERS) * 50
    gaussian_eps, _ = rdp_to_epsilon(gaussian_curve, ORDERS, DELTA)
    gaps = []
    for scale in (1.0, 10.0, 100.0, 1000.0):
        mu = scale * scale / 2.0  # σ² = 2μ / Δ2² = 1
        eps, _ = skellam_epsilon(skellam_rdp_curve(mu, scale, scale) * 50, DELTA)
        assert eps >= gaussian_eps
        gaps.append(eps / gaussian_eps - 1.0)
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0.5
    assert gaps[-1] < 1e-3


# ---------------------------------------------------------------- Poisson subsampling


def zhu_wang_term_by_term(eps: dict[int, float], q: float, alpha: int) -> float:
    """Zhu & Wang 2019, Thm. 6, written out with Python floats (no log space)."""
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += math.comb(alpha, 2) * q**2 * (1 - q) ** (alpha - 2) * math.exp(eps[2])
    for l in range(3, alpha + 1):
        total += 3 * math.comb(alpha, l) * q**l * (1 - q) ** (alpha - l) * math.exp((l - 1) * eps[l])
    return math.log(total) / (alpha - 1)


def test_subsampled_bound_matches_the_theorem_written_out() -> None:
    curve = skellam_rdp_curve(400.0, 60.0, 20.0)
    eps = {order: float(curve[order - 2]) for order in SKELLAM_ORDERS}
    for q in (0.01, 0.2, 0.7):
        amplified = poisson_subsampled_rdp(curve, q)
        for alpha in (2, 3, 4, 7, 12, 20):
            expected = min(zhu_wang_term_by_term(eps, q, alpha), eps[alpha])
            assert amplified[alpha - 2] == pytest.approx(expected, rel=1e-10)


def test_subsampled_bound_at_q_1_is_the_unsampled_curve_and_grows_with_q() -> None:
    curve = skellam_rdp_curve(50.0, 30.0, 10.0)
    assert np.array_equal(poisson_subsampled_rdp(curve, 1.0), curve)
    previous = np.zeros_like(curve)
    for q in (1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0):
        amplified = poisson_subsampled_rdp(curve, q)
        assert np.all(amplified >= previous) and np.all(amplified <= curve)
        previous = amplified
    assert poisson_subsampled_rdp(curve, 0.01)[0] < curve[0] / 100  # amplification ~ q² at small orders


@pytest.mark.parametrize(("sigma", "q"), [(0.8, 0.01), (1.0, 0.1), (2.0, 0.3), (5.0, 0.05)])
def test_subsampled_bound_on_the_gaussian_is_above_its_exact_rdp(sigma: float, q: float) -> None:
    """Zhu & Wang's generic bound applied to the Gaussian's RDP α/(2σ²) never undercuts
    Mironov et al.'s exact subsampled-Gaussian RDP (accounting.rdp), and equals it at α = 2."""
    amplified = poisson_subsampled_rdp(ORDERS / (2 * sigma**2), q)
    for alpha in (2, 3, 4, 8, 16, 32, 64, 128):
        exact = subsampled_gaussian_rdp(sigma, q, alpha)
        assert amplified[alpha - 2] >= exact * (1 - 1e-12), alpha
    assert amplified[0] == pytest.approx(subsampled_gaussian_rdp(sigma, q, 2), rel=1e-9)


def test_epsilon_of_a_composition_is_the_conversion_of_the_summed_curve() -> None:
    a, b = skellam_rdp_curve(1e4, 300.0, 100.0), skellam_rdp_curve(2e4, 300.0, 100.0)
    composed = compose_curves([(a, 3), (b, 2)])
    assert np.allclose(composed, 3 * a + 2 * b, rtol=1e-15)
    assert skellam_epsilon(composed, DELTA) == rdp_to_epsilon(composed, ORDERS, DELTA)
    assert skellam_epsilon(compose_curves([]), DELTA) == (0.0, pytest.approx(math.nan, nan_ok=True))


# ------------------------------------------------------------ per-adversary budgets


def dsk(participants, mu: float = 2e4, sampling: str = "poisson", cohort: int = 4, population: int = 400) -> DistributedSkellam:
    return DistributedSkellam(
        mu=mu, l1_sensitivity=600.0, l2_sensitivity=100.0, dim=64, cohort_size=cohort, population=population,
        sampling=sampling, participants=tuple(participants), steps=1,
    )


def sums(rounds: int, **kwargs) -> list[LedgerRecord]:
    """Client 2 in every sum, client 1 in the odd rounds, client 3 in the even ones; the
    survivors' μ varies (3 or 4 of 4 planned)."""
    out = []
    for r in range(1, rounds + 1):
        members = (1, 2) if r % 2 else (2, 3)
        mu = 2e4 if r % 3 else 1.5e4
        out.append(LedgerRecord(r, None, dsk(members, mu=mu, **kwargs), DELTA))
    return out


def server_epsilon_written_out(records: list[LedgerRecord], client: int) -> float:
    """Against the server: the unsampled Skellam RDP of the sums the client is in, added up."""
    total = np.zeros(len(SKELLAM_ORDERS))
    for record in records:
        m = record.mechanism
        if client in m.participants:
            total += [skellam_rdp(m.mu, m.l1_sensitivity, m.l2_sensitivity, a) for a in SKELLAM_ORDERS]
    return rdp_to_epsilon(total, ORDERS, DELTA)[0]


def test_server_figure_composes_exactly_the_sums_a_client_took_part_in() -> None:
    records = sums(12)
    snapshot = budget_snapshot(records, DELTA)
    server = snapshot.client_level_budgets("server")
    assert sorted(server) == [1, 2, 3] and snapshot.population is None and not snapshot.clients
    for client in (1, 2, 3):
        assert server[client].epsilon == pytest.approx(server_epsilon_written_out(records, client), rel=1e-12)
        assert not server[client].amplified
    assert (server[2].sums, server[1].sums, server[3].sums) == (12, 6, 6)
    assert server[1].epsilon < server[2].epsilon and server[3].epsilon < server[2].epsilon
    assert snapshot.worst_client_level("server").client == 2


def test_observers_of_poisson_cohorts_get_amplification_and_never_more_than_the_server() -> None:
    """The attack a regression would open: claiming the cohort amplification against the
    server. The server figure of client 2 stays the unamplified one, ~10x the observers'."""
    records = sums(12, population=4000)
    snapshot = budget_snapshot(records, DELTA)
    server, observers = snapshot.client_level_budgets("server"), snapshot.client_level_budgets("observers")
    for client in (1, 2, 3):
        assert observers[client].epsilon <= server[client].epsilon
    assert observers[2].amplified and observers[2].sums == 12
    assert observers[2].epsilon < server[2].epsilon / 10
    amplified = compose_curves(
        [(poisson_subsampled_rdp(skellam_rdp_curve(m.mu, 600.0, 100.0), 4 / 4000), 1) for m in (r.mechanism for r in records)]
    )
    assert observers[2].epsilon == pytest.approx(rdp_to_epsilon(amplified, ORDERS, DELTA)[0], rel=1e-12)


def test_fixed_size_cohorts_claim_no_amplification() -> None:
    records = sums(12, sampling="fixed_size", population=4000)
    snapshot = budget_snapshot(records, DELTA)
    server, observers = snapshot.client_level_budgets("server"), snapshot.client_level_budgets("observers")
    for client in (1, 2, 3):
        assert observers[client].epsilon == server[client].epsilon and not observers[client].amplified
        assert observers[client].against == "observers" and server[client].against == "server"


def test_mixed_cohorts_amplify_only_the_poisson_sums() -> None:
    poisson = sums(6, population=4000)
    fixed = [LedgerRecord(r, None, dsk((2,), sampling="fixed_size", population=4000), DELTA) for r in (7, 8)]
    snapshot = budget_snapshot(poisson + fixed, DELTA)
    observers = snapshot.client_level_budgets("observers")
    assert observers[2].sums == 6 + 2 and observers[1].sums == 6  # client 1 is in no fixed-size sum
    assert observers[2].epsilon > budget_snapshot(poisson, DELTA).client_level_budgets("observers")[2].epsilon


def test_figures_depend_on_the_records_only_not_on_how_they_were_fed() -> None:
    """The server's running tracker, a replay of the ledger and a cold snapshot agree to the bit,
    and so does a ledger whose records within each round come in another order."""
    records = sums(10) + [LedgerRecord(10, 5, PoissonSubsampledGaussian(1.0, 0.05, 3), DELTA)]
    records += [LedgerRecord(10, None, dsk((3, 5), mu=1.7e4), DELTA)]
    tracker = BudgetTracker(DELTA)
    for round_ in range(1, 11):
        running = tracker.add([r for r in records if r.round == round_])
    cold = budget_snapshot(records, DELTA)
    replayed = budget_history(records, DELTA)[-1]
    last_round = [r for r in records if r.round == 10]
    shuffled = [r for r in records if r.round < 10] + random.Random(3).sample(last_round, len(last_round))
    other_order = budget_snapshot(shuffled, DELTA)
    for snapshot in (cold, replayed, other_order):
        assert snapshot.client_level == running.client_level
        assert snapshot.clients == running.clients
    assert sorted(running.client_level_budgets("server")) == [1, 2, 3, 5]
    assert 4 not in running.client_level_budgets("observers")  # in no sum: spent nothing


def test_a_record_with_no_steps_spends_nothing() -> None:
    zero = LedgerRecord(1, None, DistributedSkellam(2e4, 600.0, 100.0, 64, 4, 400, "poisson", (1,), 0), DELTA)
    assert budget_snapshot([zero], DELTA).client_level_budgets("server") == {}
    with pytest.raises(ValueError, match="against must be one of"):
        budget_snapshot([zero], DELTA).client_level_budgets("the server")
