"""fedsim's epsilon against independent references, and noise calibration round trips.

References, computed here with other methods than fedsim's (no prv_accountant):

* exact Gaussian composition at q = 1 (Balle & Wang 2018, Thm. 8, solved with scipy);
* a privacy loss distribution (PLD) written for these tests: the loss of one step of
  the Poisson-subsampled Gaussian (remove direction) discretised on a grid of width h,
  rounded *down* (optimistic: a lower bound on the true eps) and *up* (pessimistic:
  an upper bound), composed by FFT convolution with tails below 1e-13 dropped
  (optimistic) or moved to the worse side (pessimistic). The two bracket the truth
  within about ``steps * h``.

fedsim's upper bound (the guarantee) must never be below a lower bound or an exact
value, and must be within 1% above an exact one or the pessimistic reference (its
band is 0.4% of eps, floor 1e-5; the PLD fallback is refined to the same tolerance).
Against dp_accounting's PLD: test_tightness.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.signal import fftconvolve
from scipy.stats import norm

from accounting import (
    CalibrationError,
    PoissonSubsampledGaussian,
    Schedule,
    calibrate,
    calibrate_schedule,
    prv_epsilon,
)

DELTA = 1e-5
TAIL = 1e-13


# ------------------------------------------------------------------ the PLD reference


class PLD:
    """Losses ``(offset + i) * h`` with probabilities ``pmf[i]``, plus mass at +infinity."""

    def __init__(self, pmf: np.ndarray, offset: int, h: float, inf_mass: float, pessimistic: bool) -> None:
        self.pmf, self.offset, self.h, self.inf_mass, self.pessimistic = pmf, offset, h, inf_mass, pessimistic

    def truncated(self) -> "PLD":
        p = np.clip(self.pmf, 0.0, None)
        head = np.cumsum(p)
        lo = int(np.searchsorted(head, TAIL))
        tail = np.cumsum(p[::-1])
        hi = len(p) - int(np.searchsorted(tail, TAIL))
        kept = p[lo:hi].copy()
        inf_mass = self.inf_mass
        if self.pessimistic:
            kept[0] += head[lo - 1] if lo > 0 else 0.0  # low losses rounded up
            inf_mass += tail[len(p) - hi - 1] if hi < len(p) else 0.0  # high losses to infinity
        return PLD(kept, self.offset + lo, self.h, inf_mass, self.pessimistic)

    def compose(self, other: "PLD") -> "PLD":
        inf_mass = 1.0 - (1.0 - self.inf_mass) * (1.0 - other.inf_mass)
        pmf = fftconvolve(self.pmf, other.pmf)
        return PLD(pmf, self.offset + other.offset, self.h, inf_mass, self.pessimistic).truncated()

    def power(self, n: int) -> "PLD":
        result, base = None, self
        while n:
            if n & 1:
                result = base if result is None else result.compose(base)
            n >>= 1
            if n:
                base = base.compose(base)
        return result

    def delta(self, eps: float) -> float:
        losses = (self.offset + np.arange(len(self.pmf))) * self.h
        above = losses > eps
        return self.inf_mass + float(np.sum(self.pmf[above] * -np.expm1(eps - losses[above])))

    def epsilon(self, delta: float) -> float:
        if self.delta(0.0) <= delta:
            return 0.0
        hi = 1.0
        while self.delta(hi) > delta:
            hi *= 2
        return brentq(lambda e: self.delta(e) - delta, 0.0, hi, xtol=1e-10)


def subsampled_gaussian_pld(sigma: float, q: float, h: float, pessimistic: bool) -> PLD:
    """One step: x ~ (1-q)N(0, s^2) + qN(1, s^2), loss = log(1 - q + q exp((2x - 1) / (2 s^2)))."""

    def survival(x: np.ndarray) -> np.ndarray:
        return (1 - q) * norm.sf(x / sigma) + q * norm.sf((x - 1) / sigma)

    def x_of(loss: np.ndarray) -> np.ndarray:  # the loss is increasing in x
        if q == 1.0:
            return sigma**2 * loss + 0.5
        return sigma**2 * np.log((np.exp(loss) - (1 - q)) / q) + 0.5

    x_high = 1 + 9.0 * sigma
    loss_high = math.log((1 - q) + q * math.exp((2 * x_high - 1) / (2 * sigma**2)))
    loss_low = (-18.0 * sigma - 1) / (2 * sigma**2) if q == 1.0 else math.log1p(-q)
    k_low, k_high = math.floor(loss_low / h), math.ceil(loss_high / h)
    edges = np.arange(k_low, k_high + 1) * h
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = x_of(edges)
    s = survival(np.where(np.isnan(xs), -np.inf, xs))
    masses = s[:-1] - s[1:]  # losses in (edges[i], edges[i + 1]]
    if pessimistic:  # each interval to its right edge; beyond the top to infinity
        return PLD(np.concatenate([[1.0 - s[0]], masses]), k_low, h, float(s[-1]), True)
    return PLD(np.concatenate([masses, [s[-1]]]), k_low, h, 0.0, False)  # to the left edge


def pld_bounds(history: list[tuple[float, float, int]], h: float) -> tuple[float, float]:
    """(lower, upper) bounds on eps at DELTA of the composition of ``(sigma, q, steps)``."""
    bounds = []
    for pessimistic in (False, True):
        total = None
        for sigma, q, steps in history:
            part = subsampled_gaussian_pld(sigma, q, h, pessimistic).truncated().power(steps)
            total = part if total is None else total.compose(part)
        bounds.append(total.epsilon(DELTA))
    return bounds[0], bounds[1]


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Balle & Wang (2018) Thm. 8 solved with scipy: delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2)) - delta

    return brentq(excess, 0.0, 1e4, xtol=1e-13)


def psg(sigma: float, q: float, steps: int) -> PoissonSubsampledGaussian:
    return PoissonSubsampledGaussian(noise_multiplier=sigma, sample_rate=q, steps=steps)


# ----------------------------------------------------------------------------- the grid


def test_pld_reference_is_sound_on_a_case_with_an_exact_answer() -> None:
    lower, upper = pld_bounds([(2.0, 1.0, 10)], h=1e-4)
    exact = exact_gaussian_epsilon(math.sqrt(10) / 2.0, DELTA)
    assert lower <= exact <= upper and upper - lower < 2e-3


@pytest.mark.parametrize(
    "sigma, steps",
    [(0.8, 1), (2.0, 10), (5.0, 100), (10.0, 1000), (1.5, 3), (20.0, 50)],
)
def test_upper_bound_against_exact_gaussian_composition(sigma: float, steps: int) -> None:
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    bound = prv_epsilon([psg(sigma, 1.0, steps)], DELTA)
    assert bound.method == "prv"
    assert bound.lower <= exact <= bound.upper
    assert bound.upper <= exact * 1.01


@pytest.mark.parametrize(
    "sigma, q, steps, h",
    [
        (1.0, 0.01, 200, 5e-5),
        (0.8, 0.05, 100, 1e-4),
        (2.0, 0.05, 500, 4e-5),
        (1.5, 0.2, 50, 1e-4),
        (4.0, 0.5, 20, 1e-4),
        (1.0, 32 / 600, 48, 1e-4),  # the default job
    ],
)
def test_upper_bound_against_pld_reference(sigma: float, q: float, steps: int, h: float) -> None:
    lower, upper = pld_bounds([(sigma, q, steps)], h)
    bound = prv_epsilon([psg(sigma, q, steps)], DELTA)
    assert bound.method == "prv"
    assert bound.upper >= lower  # never below what is certainly spent
    assert bound.upper <= upper * 1.01
    assert bound.lower <= upper and lower <= bound.estimate * 1.005 and bound.estimate <= upper * 1.005


@pytest.mark.parametrize("sigma, q, steps, h", [(2.0, 0.001, 100, 1e-6), (1.5, 0.001, 1000, 2e-6)])
def test_pld_fallback_against_pld_reference(sigma: float, q: float, steps: int, h: float) -> None:
    """eps ~ 0.015-0.07: the PRV grid would be too large; dp_accounting's PLD answers, sound and tight."""
    lower, upper = pld_bounds([(sigma, q, steps)], h)
    bound = prv_epsilon([psg(sigma, q, steps)], DELTA)
    assert bound.method == "pld"
    assert bound.upper >= lower
    assert bound.upper <= upper * 1.01


def test_heterogeneous_composition_against_pld_reference() -> None:
    """50 rounds at sigma=1, q=0.01, then 50 at sigma=2, q=0.05; 20 steps a round."""
    lower, upper = pld_bounds([(1.0, 0.01, 50 * 20), (2.0, 0.05, 50 * 20)], h=4e-5)
    rounds = [psg(1.0, 0.01, 20)] * 50 + [psg(2.0, 0.05, 20)] * 50
    bound = prv_epsilon(rounds, DELTA)
    assert bound.method == "prv"
    assert bound.upper >= lower
    assert bound.upper <= upper * 1.01
    assert lower <= bound.estimate * 1.005 and bound.estimate <= upper * 1.005
    # Each phase alone is strictly less private than both together.
    assert bound.lower > prv_epsilon(rounds[50:], DELTA).upper


# -------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(
    "schedule, target, tolerance",
    [
        (Schedule(rounds=8, local_steps=6, sample_rate=32 / 600), 1.0, 1e-3),
        (Schedule(rounds=10, local_steps=10, sample_rate=0.02), 2.0, 1e-2),
        (Schedule(rounds=50, cohort_size=20, population=500), 2.0, 1e-2),
        (Schedule(rounds=5, cohort_size=4, population=4, sampling="fixed_size"), 8.0, 1e-3),
    ],
)
def test_calibration_round_trips(schedule: Schedule, target: float, tolerance: float) -> None:
    result = calibrate_schedule(schedule, target, DELTA, tolerance=tolerance)
    sigma = result.noise_multiplier
    assert result.epsilon == prv_epsilon(schedule.history(sigma), DELTA)
    assert result.epsilon.upper <= target
    assert prv_epsilon(schedule.history(sigma * (1 - tolerance)), DELTA).upper > target
    assert result.rdp_epsilon > result.epsilon.upper  # RDP would have needed more noise


def test_calibration_errors_are_clear() -> None:
    schedule = Schedule(rounds=10, local_steps=10, sample_rate=0.01)
    with pytest.raises(CalibrationError, match="out of reach"):
        calibrate_schedule(Schedule(rounds=1, local_steps=1, sample_rate=1.0), 1e-4, 1e-10)
    with pytest.raises(CalibrationError, match="met even at"):
        calibrate_schedule(schedule, 1e6, DELTA)
    with pytest.raises(CalibrationError, match="target_epsilon"):
        calibrate_schedule(schedule, 0.0, DELTA)
    with pytest.raises(CalibrationError, match="tolerance"):
        calibrate_schedule(schedule, 1.0, DELTA, tolerance=0.5)
    with pytest.raises(ValueError, match="delta"):
        calibrate_schedule(schedule, 1.0, 1.5)
    with pytest.raises(ValueError, match="not a mix"):
        Schedule(rounds=10, local_steps=10, sample_rate=0.01, cohort_size=5, population=10)
    with pytest.raises(ValueError, match="Schedule.rounds"):
        Schedule(rounds=0, local_steps=10, sample_rate=0.01)


def test_calibrate_takes_any_monotone_history() -> None:
    result = calibrate(lambda s: [psg(s, 0.05, 20), psg(2 * s, 0.1, 10)], 2.0, DELTA, tolerance=1e-2)
    assert result.epsilon.upper <= 2.0
