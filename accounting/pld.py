"""Pessimistic privacy loss distributions (PLDs): the PRV accountant's first fallback.

Google's ``dp_accounting`` (``dp_accounting.pld``): the privacy loss of one step of the
Poisson-subsampled Gaussian, discretised with the *pessimistic connect-the-dots*
construction (Doroshenko, Ghazi, Kamath, Kumar, Manurangsi 2022, "Connect the Dots:
Tighter Discrete Approximations of Privacy Loss Distributions", PETS; Alg. 1 and
Thm. 4.2), for both neighbouring directions (add and remove one record), composed by
FFT (Koskela, Jälkö, Honkela 2020) with the truncated tails moved to the worse side.
``get_epsilon_for_delta`` of that PLD is an upper bound on the true epsilon for every
discretisation interval ``h`` (the pessimistic PLD dominates the true one: its delta
is above the true delta at every epsilon, Doroshenko et al. Thm. 4.2, and
``dp_accounting``'s "Observation 1"). So the figure is sound whatever ``h``; ``h``
only decides how tight it is.

**Discretisation error and the choice of h.** Each step's loss is moved by at most
``h`` to a neighbouring grid point, so the pessimistic epsilon exceeds the truth by at
most ``steps * h`` (a coupling argument); connect-the-dots does far better in practice
(its error shrinks about as ``h**2``: for sigma=1, q=0.01, 1e5 steps, 25.590 at
``h = 1e-3`` against 25.573 at ``h = 1e-4``). ``steps * h`` is too pessimistic to size
``h`` by (1e5 steps would need ``h ~ 1e-6``), so ``h`` is chosen a posteriori
(:func:`pld_epsilon`): start from ``h0`` (a power of two near ``tolerance / 8``, the
tolerance taken at RDP's eps, which is never below the truth),
halve it, and stop when two successive figures differ by at most ``tolerance`` =
``max(relative * eps, floor)`` at the finer figure.
Pessimistic figures shrink towards the truth as the grid is refined, at first order at
worst, so the last figure is then within about ``tolerance`` of the truth (within a
third of it at second order). The last figure is reported: it is the tighter one and
sound on its own. The refinement stops early, with a warning, when the next one-step
PLD would exceed ``max_points``; the figure is still a sound upper bound.

Every figure is a deterministic function of the canonical history, ``delta`` and the
tolerance: ``h`` is a power of two computed from them, and ``dp_accounting`` is
deterministic for fixed inputs. ``dp_accounting`` is imported on first use only
(it pulls in ``scipy.signal`` and ``scipy.stats``: ~0.8 s), so ``import accounting``
stays light.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from .mechanisms import PoissonSubsampledGaussian

__all__ = [
    "DEFAULT_MAX_PLD_POINTS",
    "LOG_MASS_TRUNCATION",
    "PLDAccountant",
    "PLDEpsilon",
    "one_step_points",
    "pld_epsilon",
    "start_interval",
]

logger = logging.getLogger(__name__)

#: ``dp_accounting``'s ``log_mass_truncation_bound``: the Gaussian's mass beyond
#: ``exp(-50)`` is cut and, pessimistically, sent to infinite loss.
LOG_MASS_TRUNCATION = -50.0

#: |x| / sigma beyond which the Gaussian's mass is below exp(LOG_MASS_TRUNCATION):
#: ``-Phi^{-1}(exp(-50))`` = 9.84, rounded up.
_TRUNCATED_Z = 10.0

#: Largest one-step PLD (points over both directions) we build; dp_accounting's
#: connect-the-dots construction costs ~12 us a point, so 2**17 points is ~1.5 s.
DEFAULT_MAX_PLD_POINTS = 2**17

#: The first interval is ``tolerance / START_RATIO`` rounded down to a power of two.
START_RATIO = 8.0

#: Coarsest interval tried (a loss grid coarser than 1/16 nat is not an estimate).
MAX_INTERVAL = 2.0**-4

#: Refinements tried at most (each doubles the one-step PLD).
MAX_REFINEMENTS = 12


def _loss(x: float, sigma: float, q: float) -> float:
    """Privacy loss at output ``x`` of the remove direction: log(1 - q + q exp((2x - 1) / (2 sigma^2)))."""
    z = (2.0 * x - 1.0) / (2.0 * sigma * sigma)
    if q == 1.0:
        return z
    return math.log1p(-q) + math.log1p(q / (1.0 - q) * math.exp(min(z, 700.0)))


def one_step_points(mechanism: PoissonSubsampledGaussian, interval: float) -> int:
    """Points of one step's pessimistic PLD at ``interval``, both directions (an estimate from above).

    The loss is monotone in the output x, and dp_accounting keeps x within about
    ``_TRUNCATED_Z`` standard deviations of the means 0 and 1, so the loss range of
    each direction is at most ``loss(1 + Z sigma) - loss(-Z sigma)``.
    """
    sigma, q = mechanism.noise_multiplier, mechanism.sample_rate
    span = _loss(1.0 + _TRUNCATED_Z * sigma, sigma, q) - _loss(-_TRUNCATED_Z * sigma, sigma, q)
    return 2 * (math.ceil(span / interval) + 1)


def start_interval(tolerance: float) -> float:
    """The first interval: ``tolerance / START_RATIO`` rounded down to a power of two, at most MAX_INTERVAL."""
    if not (tolerance > 0.0 and math.isfinite(tolerance)):
        return MAX_INTERVAL  # nothing known: start coarse
    return min(MAX_INTERVAL, 2.0 ** math.floor(math.log2(tolerance / START_RATIO)))


@dataclass(frozen=True)
class PLDEpsilon:
    """Epsilon (a sound upper bound) of a pessimistic PLD, with how it was reached.

    ``interval`` is the discretisation ``h`` of the reported figure, ``coarser`` the
    figure at ``2 h`` (``inf`` when none was computed), ``converged`` whether they
    differ by at most the tolerance asked for.
    """

    epsilon: float
    interval: float
    coarser: float
    converged: bool


class PLDAccountant:
    """Pessimistic connect-the-dots PLDs of Poisson-subsampled Gaussians, one-step PLDs cached.

    Args:
        max_points: cap on one step's PLD (:func:`one_step_points`).
        max_cached: one-step PLDs kept (least recently used evicted first).
    """

    def __init__(self, *, max_points: int = DEFAULT_MAX_PLD_POINTS, max_cached: int = 64) -> None:
        for name, value in (("max_points", max_points), ("max_cached", max_cached)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.max_points = max_points
        self.max_cached = max_cached
        self._one_step: OrderedDict[tuple[float, float, float], Any] = OrderedDict()

    def one_step(self, mechanism: PoissonSubsampledGaussian, interval: float) -> Any:
        """dp_accounting's pessimistic connect-the-dots PLD of one step of ``mechanism``."""
        key = (mechanism.noise_multiplier, mechanism.sample_rate, interval)
        if key in self._one_step:
            self._one_step.move_to_end(key)
            return self._one_step[key]
        from dp_accounting.pld import privacy_loss_distribution  # lazy: see the module docstring

        pld = privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=mechanism.noise_multiplier,
            sensitivity=1.0,
            pessimistic_estimate=True,
            value_discretization_interval=interval,
            log_mass_truncation_bound=LOG_MASS_TRUNCATION,
            sampling_prob=mechanism.sample_rate,
            use_connect_dots=True,
        )
        self._one_step[key] = pld
        while len(self._one_step) > self.max_cached:
            self._one_step.popitem(last=False)
        return pld

    def epsilon_at(self, history: Sequence[PoissonSubsampledGaussian], delta: float, interval: float) -> float:
        """Pessimistic epsilon at ``delta`` of the composition of ``history`` on the grid ``interval``."""
        composed = None
        for mechanism in history:
            part = self.one_step(mechanism, interval).self_compose(mechanism.steps)
            composed = part if composed is None else composed.compose(part)
        if composed is None:
            return 0.0
        return float(composed.get_epsilon_for_delta(delta))

    def epsilon(
        self, history: Sequence[PoissonSubsampledGaussian], delta: float, relative: float, floor: float, *, first: float
    ) -> PLDEpsilon:
        """See :func:`pld_epsilon`; ``first`` is the first interval (a power of two)."""
        if not history:
            return PLDEpsilon(0.0, first, math.inf, True)

        def tolerance(eps: float) -> float:
            return max(relative * eps, floor)

        def affordable(interval: float) -> bool:
            return max(one_step_points(m, interval) for m in history) <= self.max_points

        interval = first
        while not affordable(interval) and interval < MAX_INTERVAL:
            interval *= 2.0
        current = self.epsilon_at(history, delta, interval)
        coarser = math.inf
        for _ in range(MAX_REFINEMENTS):
            if coarser - current <= tolerance(current) or not affordable(interval / 2.0):
                break
            coarser, interval = current, interval / 2.0
            current = self.epsilon_at(history, delta, interval)
        converged = coarser - current <= tolerance(current)
        if not converged:
            logger.warning(
                "PLD epsilon %.6g at interval %g differs from %.6g at twice the interval by more than the "
                "tolerance %.3g (next one-step PLD over max_points=%d); reporting it (a sound upper bound)",
                current, interval, coarser, tolerance(current), self.max_points,
            )
        return PLDEpsilon(current, interval, coarser, converged)


def pld_epsilon(
    history: Sequence[PoissonSubsampledGaussian],
    delta: float,
    relative: float,
    floor: float,
    *,
    guess: float = math.inf,
    accountant: PLDAccountant | None = None,
) -> PLDEpsilon:
    """Pessimistic PLD epsilon at ``delta`` of a canonical history, refined to ``max(relative * eps, floor)``.

    Starts at :func:`start_interval` of ``max(relative * guess, floor)`` (``guess``: an
    upper bound on epsilon such as RDP's; ``inf``: the coarsest interval), halves the
    interval until two successive figures differ by at most ``max(relative * eps,
    floor)`` of the finer figure ``eps`` (see the module docstring) and returns the last
    one, a sound upper bound in every case.

    Args:
        history: canonical mechanisms (:func:`accounting.mechanisms.accounted_history`).
        delta: in (0, 1).
        relative: tolerance relative to epsilon, >= 0.
        floor: absolute tolerance, > 0 (what counts for epsilon near 0).
        guess: where to start.
        accountant: a :class:`PLDAccountant` whose one-step PLDs to reuse.
    """
    for name, value, least in (("relative", relative, 0.0), ("floor", floor, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < least:
            raise ValueError(f"{name} must be a finite number >= {least}, got {value!r}")
    if not floor > 0.0:
        raise ValueError(f"floor must be > 0, got {floor!r}")
    accountant = accountant if accountant is not None else PLDAccountant()
    first = start_interval(max(relative * guess, floor))
    return accountant.epsilon(history, delta, float(relative), float(floor), first=first)
