"""Noise calibration: the least noise whose PRV guarantee meets a target (epsilon, delta).

The PRV upper bound of a fixed schedule falls as the noise multiplier sigma grows, so
sigma is found by bisection (on a log scale) between a bracket where the target is
missed and one where it is met; every evaluation is the same guarantee the run will
report (:func:`accounting.prv.prv_epsilon`, the upper bound).

Tolerance (relative, on sigma): the result satisfies both

* ``epsilon_upper(sigma) <= target``: the run meets its target, and
* ``epsilon_upper(sigma * (1 - tolerance)) > target``: it adds at most ``tolerance``
  (relative) more noise than needed.

The PRV bound is monotone in sigma only up to its ``eps_error`` band, so the second
condition is checked by evaluating it, and the search goes on while it fails.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .mechanisms import SAMPLING_POISSON, ClientLevelGaussian, Mechanism, PoissonSubsampledGaussian
from .prv import DEFAULT_EPS_ERROR, EpsilonBound, PRVComposer
from .rdp import check_delta

__all__ = [
    "CLIENT_LEVEL_CAVEAT",
    "DEFAULT_TOLERANCE",
    "SIGMA_RANGE",
    "Calibration",
    "CalibrationError",
    "CurvePoint",
    "Schedule",
    "calibrate",
    "calibrate_schedule",
    "schedule_curve",
]

logger = logging.getLogger(__name__)

#: Relative tolerance on the noise multiplier (see the module docstring).
DEFAULT_TOLERANCE = 1e-3

#: What a client-level plan computes, in words (see :class:`Schedule`).
CLIENT_LEVEL_CAVEAT = (
    "client level is planned on the continuous-Gaussian model (ClientLevelGaussian, PRV, cohort amplification "
    "as seen by observers of the released models): a lower bound on the noise a distributed-Skellam run needs. "
    "The run reports more at this sigma (Skellam RDP with rounded sensitivities; no amplification against the "
    "server): check its figures with `fedsim run --dry-run` and `fedsim budget show`"
)

#: Noise multipliers searched: below 0.05 nothing is private, above 1000 nothing is learnt.
SIGMA_RANGE = (0.05, 1000.0)


class CalibrationError(ValueError):
    """The target cannot be met inside :data:`SIGMA_RANGE` (or the request is malformed)."""


def _check_positive_int(owner: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}.{field} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Schedule:
    """What a run releases, with the noise multiplier left open.

    Sample level (DP-SGD, one guarantee per client): ``rounds`` x ``local_steps``
    Poisson-subsampled Gaussian steps at ``sample_rate`` (q = B / n; when clients'
    shards differ, give the largest q, i.e. the smallest shard: every client then meets
    the target).

    Client level (DP-FedAvg, the population's guarantee): ``rounds`` releases, each a
    subsampled Gaussian with q = ``cohort_size / population`` (see
    :class:`~accounting.mechanisms.ClientLevelGaussian` for ``sampling``); leave
    ``local_steps`` and ``sample_rate`` unset. This is the *continuous-Gaussian model*
    of client-level DP, seen by observers of the released models (cohort amplification
    included); it is not what a distributed-Skellam run reports. At the same noise
    multiplier the run's RDP curves lie pointwise above the subsampled Gaussian's (the
    Skellam bound is the Gaussian's plus a discreteness term and rounding inflates the
    sensitivity; Zhu & Wang's subsampling bound is above Mironov et al.'s exact one;
    against the server no amplification holds), and RDP converts to a looser epsilon
    than the PRV: the run reports more than this plan, so the sigma calibrated on it
    is a lower bound on the noise a Skellam run needs for the target
    (:data:`CLIENT_LEVEL_CAVEAT`).
    """

    rounds: int
    local_steps: Optional[int] = None
    sample_rate: Optional[float] = None
    cohort_size: Optional[int] = None
    population: Optional[int] = None
    sampling: str = SAMPLING_POISSON

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_positive_int(owner, "rounds", self.rounds)
        sample_level = (self.local_steps, self.sample_rate)
        client_level = (self.cohort_size, self.population)
        if all(v is not None for v in sample_level) and all(v is None for v in client_level):
            _check_positive_int(owner, "local_steps", self.local_steps)
            q = self.sample_rate
            if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 < float(q) <= 1.0:
                raise ValueError(f"{owner}.sample_rate must be a number in (0, 1], got {q!r}")
        elif all(v is not None for v in client_level) and all(v is None for v in sample_level):
            ClientLevelGaussian(1.0, self.cohort_size, self.population, self.rounds, self.sampling)  # validates
        else:
            raise ValueError(
                f"{owner}: give local_steps and sample_rate (sample level) or cohort_size and population "
                f"(client level), not a mix; got local_steps={self.local_steps!r}, sample_rate={self.sample_rate!r}, "
                f"cohort_size={self.cohort_size!r}, population={self.population!r}"
            )

    @property
    def client_level(self) -> bool:
        return self.cohort_size is not None

    def history(self, noise_multiplier: float, rounds: Optional[int] = None) -> tuple[Mechanism, ...]:
        """What one party has gone through after ``rounds`` rounds (default: all) at ``noise_multiplier``."""
        rounds = self.rounds if rounds is None else rounds
        if self.client_level:
            return (ClientLevelGaussian(noise_multiplier, self.cohort_size, self.population, rounds, self.sampling),)
        return (PoissonSubsampledGaussian(noise_multiplier, self.sample_rate, rounds * self.local_steps),)

    def describe(self) -> str:
        if self.client_level:
            return (
                f"{self.rounds} client-level rounds, cohort {self.cohort_size} of {self.population} "
                f"({'Poisson' if self.sampling == SAMPLING_POISSON else 'fixed size'}), continuous-Gaussian model "
                "(a lower bound on the noise a distributed-Skellam run needs)"
            )
        return f"{self.rounds} rounds x {self.local_steps} DP-SGD steps at sample rate {self.sample_rate:g}"


@dataclass(frozen=True)
class Calibration:
    """The calibrated noise multiplier and the guarantee it gives."""

    noise_multiplier: float
    epsilon: EpsilonBound  # at ``noise_multiplier``: ``epsilon.upper <= target_epsilon``
    rdp_epsilon: float
    target_epsilon: float
    tolerance: float
    evaluations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "target_epsilon": self.target_epsilon,
            "delta": self.epsilon.delta,
            "tolerance": self.tolerance,
            "epsilon_lower": self.epsilon.lower,
            "epsilon_estimate": self.epsilon.estimate,
            "epsilon_upper": self.epsilon.upper,
            "accountant": self.epsilon.method,
            "epsilon_rdp": self.rdp_epsilon,
            "evaluations": self.evaluations,
        }


def _check_target(target_epsilon: float) -> float:
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, numbers.Real):
        raise CalibrationError(f"target_epsilon must be a number > 0, got {target_epsilon!r}")
    if not (0.0 < float(target_epsilon) < math.inf):
        raise CalibrationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    return float(target_epsilon)


def calibrate(
    history: Callable[[float], Sequence[Mechanism]],
    target_epsilon: float,
    delta: float,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    eps_error: float = DEFAULT_EPS_ERROR,
    composer: Optional[PRVComposer] = None,
) -> Calibration:
    """Smallest noise multiplier (within ``tolerance``) whose PRV upper bound is <= ``target_epsilon``.

    Args:
        history: ``sigma -> mechanisms`` one party goes through with noise ``sigma``;
            its epsilon must not grow with sigma.
        target_epsilon: > 0.
        delta: in (0, 1).
        tolerance: relative tolerance on sigma, in (0, 0.1].
        eps_error: absolute floor of the PRV band's half-width (as the run will use).

    Raises:
        CalibrationError: bad target/tolerance, or the target is missed even at
            sigma = 1000, or met already at sigma = 0.05 (:data:`SIGMA_RANGE`, by the
            RDP bound, which is never below the truth).
    """
    target = _check_target(target_epsilon)
    delta = check_delta(delta)
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not 0.0 < tolerance <= 0.1:
        raise CalibrationError(f"tolerance must be a number in (0, 0.1], got {tolerance!r}")
    composer = composer if composer is not None else PRVComposer(eps_error)
    evaluations = 0

    def upper(sigma: float) -> float:
        nonlocal evaluations
        evaluations += 1
        return composer.epsilon(history(sigma), delta).upper

    def rdp(sigma: float) -> float:
        return composer.rdp_epsilon(history(sigma), delta)

    low, high = SIGMA_RANGE
    if rdp(low) <= target:
        raise CalibrationError(
            f"target_epsilon={target:g} at delta={delta:g} is met even at noise_multiplier={low:g} "
            f"(RDP bound {rdp(low):.4g}), the least noise searched {list(SIGMA_RANGE)}: ask for a smaller epsilon"
        )
    # RDP is cheap and never below the truth: a first guess from above, then PRV.
    hi = 1.0
    while rdp(hi) > target and hi < high:
        hi = min(2.0 * hi, high)
    while upper(hi) > target:
        if hi >= high:
            raise CalibrationError(
                f"target_epsilon={target:g} at delta={delta:g} is out of reach: even noise_multiplier={high:g} "
                f"gives epsilon <= {upper(high):.4g} (PRV upper bound)"
            )
        hi = min(1.25 * hi, high)
    lo = hi / 1.25
    while upper(lo) <= target:  # PRV meets the target with less noise still
        hi, lo = lo, max(lo / 1.25, low)
        if hi == low:
            raise CalibrationError(
                f"target_epsilon={target:g} at delta={delta:g} is met even at noise_multiplier={low:g}, "
                f"the least noise searched {list(SIGMA_RANGE)}: ask for a smaller epsilon"
            )
    while True:  # lo misses the target, hi meets it
        while lo < hi * (1.0 - tolerance):
            mid = math.sqrt(lo * hi)
            if upper(mid) <= target:
                hi = mid
            else:
                lo = mid
        below = hi * (1.0 - tolerance)
        if upper(below) > target:
            break
        hi, lo = below, min(lo, below * (1.0 - tolerance))  # the bound wiggled within its band: go on
    bound = composer.epsilon(history(hi), delta)
    logger.debug("calibrated sigma=%.6g: eps_upper=%.6g <= %g after %d evaluations", hi, bound.upper, target, evaluations)
    return Calibration(
        noise_multiplier=hi,
        epsilon=bound,
        rdp_epsilon=composer.rdp_epsilon(history(hi), delta),
        target_epsilon=target,
        tolerance=float(tolerance),
        evaluations=evaluations,
    )


def calibrate_schedule(schedule: Schedule, target_epsilon: float, delta: float, **options: Any) -> Calibration:
    """:func:`calibrate` for a run's :class:`Schedule`, the call behind ``fedsim run --target-epsilon``.

    ``options`` are :func:`calibrate`'s (``tolerance``, ``eps_error``, ``composer``).
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    return calibrate(schedule.history, target_epsilon, delta, **options)


@dataclass(frozen=True)
class CurvePoint:
    """Epsilon after ``round`` rounds of a schedule."""

    round: int
    steps: int
    prv: EpsilonBound
    rdp: float


def schedule_curve(
    schedule: Schedule,
    noise_multiplier: float,
    delta: float,
    *,
    eps_error: float = DEFAULT_EPS_ERROR,
    composer: Optional[PRVComposer] = None,
) -> list[CurvePoint]:
    """Epsilon (PRV band and RDP) after each round 1..rounds of ``schedule`` at ``noise_multiplier``."""
    composer = composer if composer is not None else PRVComposer(eps_error)
    points = []
    for r in range(1, schedule.rounds + 1):
        history = schedule.history(noise_multiplier, r)
        points.append(CurvePoint(
            round=r,
            steps=sum(m.steps for m in history),
            prv=composer.epsilon(history, delta),
            rdp=composer.rdp_epsilon(history, delta),
        ))
    return points

