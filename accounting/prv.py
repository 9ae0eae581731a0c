"""Tight (eps, delta) of composed mechanisms via privacy random variables (PRVs).

Gopi, Lee, Wutschitz 2021, "Numerical Composition of Differential Privacy" (NeurIPS):
each mechanism's privacy loss is a random variable; composition adds them; a
discretised, truncated PRV is composed by FFT and gives ``eps`` with a certified band
``[lower, upper]`` of half-width ``eps_error`` (their Thm. 5.5), at the cost of
``delta_error`` in delta. ``upper`` is the guarantee to report.

When the PRV numerics cannot be trusted (prv_accountant raises, the grid would not
fit in memory, or the answer contradicts an independent bound) we fall back to a
sound bound and say so in :attr:`EpsilonBound.method`:

* every mechanism at ``sample_rate == 1``: the exact composition of Gaussians
  (Balle & Wang 2018; Dong, Roth, Su 2019) -> ``"analytic_gaussian"``;
* otherwise Rényi DP (:mod:`accounting.rdp`) -> ``"rdp"``.

The PRV of the Poisson-subsampled Gaussian in prv_accountant is the *remove*
direction ((1-q)N(0,s^2) + qN(1,s^2) against N(0,s^2)), as in Gopi et al. and Opacus.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from prv_accountant import PRVAccountant
from prv_accountant.accountant import compute_safe_domain_size
from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism
from scipy.fft import next_fast_len
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from .mechanisms import Mechanism, PoissonSubsampledGaussian, merge_mechanisms
from .rdp import check_delta, rdp_epsilon

__all__ = [
    "METHOD_PRV",
    "METHOD_RDP",
    "METHOD_ANALYTIC_GAUSSIAN",
    "METHOD_NONE",
    "DEFAULT_MAX_GRID_POINTS",
    "EpsilonBound",
    "gaussian_delta",
    "gaussian_epsilon",
    "composed_gaussian_mu",
    "prv_epsilon",
]

logger = logging.getLogger(__name__)

METHOD_PRV = "prv"
METHOD_RDP = "rdp"
METHOD_ANALYTIC_GAUSSIAN = "analytic_gaussian"
METHOD_NONE = "none"  # nothing was released: eps = 0

#: Largest PRV discretisation we attempt, in grid points summed over the distinct
#: mechanisms (~250 bytes and ~3 us per point with prv_accountant 0.2.0): ~2 GB, ~30 s.
DEFAULT_MAX_GRID_POINTS = 8_000_000

#: delta_error = delta * DELTA_ERROR_FRACTION (the choice of prv_accountant and Opacus).
DELTA_ERROR_FRACTION = 1e-3


class PRVUnavailable(RuntimeError):
    """The PRV computation was not attempted or its result was rejected."""


@dataclass(frozen=True)
class EpsilonBound:
    """Epsilon at ``delta`` with its certified band.

    ``lower <= true eps <= upper`` for ``method == "prv"`` (Gopi et al. 2021, Thm. 5.5);
    ``estimate`` is the point estimate. For the fallbacks (``"rdp"``,
    ``"analytic_gaussian"``) and ``"none"``, ``lower == estimate == upper``: for
    ``"rdp"`` it is an upper bound only (the true eps may be smaller); for
    ``"analytic_gaussian"`` it is exact (rounded up).
    """

    lower: float
    estimate: float
    upper: float
    delta: float
    method: str

    def __post_init__(self) -> None:
        for field in ("lower", "estimate", "upper", "delta"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or math.isnan(value):
                raise ValueError(f"EpsilonBound.{field} must be a number, got {value!r}")
            object.__setattr__(self, field, float(value))
        if not 0.0 <= self.lower <= self.estimate <= self.upper:
            raise ValueError(
                "EpsilonBound must satisfy 0 <= lower <= estimate <= upper, got "
                f"lower={self.lower!r}, estimate={self.estimate!r}, upper={self.upper!r}"
            )
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"EpsilonBound.delta must be in (0, 1), got {self.delta!r}")
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"EpsilonBound.method must be a non-empty string, got {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``upper`` may be ``inf`` only for a degenerate RDP fallback)."""
        return {
            "lower": self.lower,
            "estimate": self.estimate,
            "upper": self.upper,
            "delta": self.delta,
            "method": self.method,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpsilonBound":
        """Inverse of :meth:`to_dict`."""
        expected = {"lower", "estimate", "upper", "delta", "method"}
        if not isinstance(data, Mapping) or set(data) != expected:
            raise ValueError(f"EpsilonBound: expected exactly the fields {sorted(expected)}, got {data!r}")
        return cls(**data)


# --------------------------------------------------------------------------- validation


def _check_eps_error(eps_error: float) -> float:
    if isinstance(eps_error, bool) or not isinstance(eps_error, (int, float, np.floating)):
        raise ValueError(f"eps_error must be a real number in (0, 1], got {eps_error!r}")
    if not 0.0 < float(eps_error) <= 1.0:
        raise ValueError(f"eps_error must be in (0, 1], got {eps_error!r}")
    return float(eps_error)


# ------------------------------------------------------- exact composition of Gaussians


def gaussian_delta(epsilon: float, mu: float) -> float:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity/sigma ratio ``mu``.

    Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential Privacy",
    Thm. 8: ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``; the second
    term is evaluated in log space so it does not overflow for large eps.
    """
    first = float(ndtr(-epsilon / mu + mu / 2.0))
    log_second = epsilon + float(log_ndtr(-epsilon / mu - mu / 2.0))
    return first - math.exp(log_second) if log_second > -745.0 else first


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Smallest eps with ``gaussian_delta(eps, mu) <= delta``, rounded up (never below the truth).

    delta(eps) is decreasing in eps, so the root is bracketed by doubling and found
    with Brent's method (scipy ``brentq``), then nudged upward until
    ``gaussian_delta(eps) <= delta`` holds in floating point.
    """
    delta = check_delta(delta)
    if not (mu > 0.0 and math.isfinite(mu)):
        raise ValueError(f"mu must be finite and > 0, got {mu!r}")
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while gaussian_delta(hi, mu) > delta:
        hi *= 2.0
    eps = float(brentq(lambda e: gaussian_delta(e, mu) - delta, 0.0, hi, xtol=1e-12, rtol=1e-14))
    step = 1e-12 * max(1.0, eps)
    while gaussian_delta(eps, mu) > delta:
        eps += step
        step *= 2.0
    return eps


def composed_gaussian_mu(mechanisms: Sequence[Mechanism]) -> float:
    """mu of the composition of Gaussian mechanisms (all ``sample_rate == 1``).

    T_i runs with multiplier sigma_i compose to one Gaussian with
    ``mu = sqrt(sum_i T_i / sigma_i^2)`` (Dong, Roth, Su 2019, Cor. 3.3): for T equal
    runs, multiplier sigma / sqrt(T).
    """
    if any(m.sample_rate != 1.0 for m in mechanisms):
        raise ValueError("composed_gaussian_mu needs every mechanism at sample_rate == 1")
    return math.sqrt(sum(m.steps / m.noise_multiplier**2 for m in mechanisms))


# ------------------------------------------------------------------------------ PRV path


def _to_prv(mechanism: Mechanism) -> PoissonSubsampledGaussianMechanism:
    """The prv_accountant privacy random variable of one run of ``mechanism``."""
    if isinstance(mechanism, PoissonSubsampledGaussian):
        return PoissonSubsampledGaussianMechanism(
            sampling_probability=mechanism.sample_rate, noise_multiplier=mechanism.noise_multiplier
        )
    raise TypeError(f"no PRV for mechanism type {type(mechanism).__name__}")


def _mesh_size(total_steps: int, eps_error: float, delta_error: float) -> float:
    """Grid spacing that certifies ``eps_error`` (Gopi et al. 2021, Thm. 5.5; as in prv_accountant)."""
    return eps_error / math.sqrt(total_steps / 2.0 * math.log(12.0 / delta_error))


def _fft_friendly_half_width(safe_half_width: float, mesh: float) -> tuple[float, int]:
    """Enlarge the domain [-L, L] so that prv_accountant's grid length is 5-smooth.

    prv_accountant builds ``Domain.create_aligned(-L, L, mesh)``: for
    ``L = (n - 1/2) * mesh`` that grid has ``2n + 2`` points. Grid lengths with a large
    prime factor make its long-double FFT up to ~15x slower. A larger L than the safe
    one (Gopi et al. 2021, Remark 5.6) only truncates less, so the bound stays valid.
    Returns ``(L, number of grid points)``.
    """
    n = math.ceil(safe_half_width / mesh + 0.5)
    size = next_fast_len(2 * n + 2, real=True)
    while size % 2:
        size = next_fast_len(size + 1, real=True)
    n = size // 2 - 1
    return (n - 0.5) * mesh, size


def _prv_band(
    mechanisms: Sequence[Mechanism], delta: float, eps_error: float, max_grid_points: int
) -> tuple[float, float, float]:
    """(lower, estimate, upper) from prv_accountant's heterogeneous PRVAccountant.

    Raises PRVUnavailable if the grid would exceed ``max_grid_points``; lets
    prv_accountant's own RuntimeError / MemoryError / ValueError propagate.
    """
    delta_error = delta * DELTA_ERROR_FRACTION
    prvs = [_to_prv(m) for m in mechanisms]
    steps = [m.steps for m in mechanisms]
    safe_half_width = float(
        compute_safe_domain_size(prvs, steps, eps_error=eps_error, delta_error=delta_error)
    )
    mesh = _mesh_size(sum(steps), eps_error, delta_error)
    half_width, size = _fft_friendly_half_width(safe_half_width, mesh)
    if size * len(prvs) > max_grid_points:
        raise PRVUnavailable(
            f"PRV grid of {size} points x {len(prvs)} distinct mechanism(s) exceeds "
            f"max_grid_points={max_grid_points}"
        )
    with warnings.catch_warnings():
        # eps_max only sets the domain half-width; ours is >= the safe one above.
        warnings.filterwarnings("ignore", message="Assuming that true epsilon", category=UserWarning)
        accountant = PRVAccountant(
            prvs=prvs,
            max_self_compositions=steps,
            eps_error=eps_error,
            delta_error=delta_error,
            eps_max=half_width,
        )
    lower, estimate, upper = accountant.compute_epsilon(delta=delta, num_self_compositions=steps)
    return float(lower), float(estimate), float(upper)


def _clamped(lower: float, estimate: float, upper: float, delta: float) -> EpsilonBound:
    """EpsilonBound of a PRV band; negative values clamp to 0 ((eps<0, delta)-DP => (0, delta)-DP)."""
    return EpsilonBound(
        lower=max(0.0, lower), estimate=max(0.0, estimate), upper=max(0.0, upper), delta=delta, method=METHOD_PRV
    )


def _fallback(mechanisms: Sequence[Mechanism], delta: float, reason: str) -> EpsilonBound:
    """Sound replacement for a failed PRV computation (exact Gaussian at q=1, else RDP)."""
    if all(m.sample_rate == 1.0 for m in mechanisms):
        eps = gaussian_epsilon(composed_gaussian_mu(mechanisms), delta)
        method = METHOD_ANALYTIC_GAUSSIAN
    else:
        eps = rdp_epsilon(mechanisms, delta)
        method = METHOD_RDP
    logger.warning("PRV accounting unavailable (%s); reporting %s bound eps=%.6g at delta=%g", reason, method, eps, delta)
    return EpsilonBound(lower=eps, estimate=eps, upper=eps, delta=delta, method=method)


def prv_epsilon(
    mechanisms: Sequence[Mechanism],
    delta: float,
    eps_error: float = 0.01,
    *,
    max_grid_points: int = DEFAULT_MAX_GRID_POINTS,
) -> EpsilonBound:
    """Epsilon at ``delta`` of the composition of ``mechanisms``, PRV-tight where possible.

    Mechanisms with identical parameters are merged first (steps summed); zero total
    steps gives eps = 0 with ``method == "none"``. Otherwise prv_accountant's
    heterogeneous ``PRVAccountant`` (Gopi et al. 2021) gives ``lower/estimate/upper``
    with ``delta_error = delta / 1000``: ``upper = eps(delta - delta_error) + eps_error``
    and ``lower = eps(delta + delta_error) - eps_error`` on the discretised PRV.

    The PRV answer is cross-checked against an independent bound: the exact value at
    ``sample_rate == 1`` (must lie in [lower, upper]) or RDP otherwise (lower must not
    exceed it). On a prv_accountant failure (``RuntimeError`` "Discrete mean differs
    ...", ``MemoryError``, ``ValueError`` for tiny delta), a grid above
    ``max_grid_points``, or a failed cross-check, the result is the sound fallback
    described in the module docstring, with ``lower == estimate == upper``.

    Args:
        mechanisms: what one party's data went through, in any order.
        delta: target delta, in (0, 1).
        eps_error: half-width of the certified band, in (0, 1]; <= 0.01 recommended.
        max_grid_points: cap on the PRV discretisation (memory/time guard).
    """
    delta = check_delta(delta)
    eps_error = _check_eps_error(eps_error)
    if isinstance(max_grid_points, bool) or not isinstance(max_grid_points, int) or max_grid_points < 2:
        raise ValueError(f"max_grid_points must be an integer >= 2, got {max_grid_points!r}")
    merged = merge_mechanisms(mechanisms)
    if not merged:
        return EpsilonBound(lower=0.0, estimate=0.0, upper=0.0, delta=delta, method=METHOD_NONE)

    started = time.perf_counter()
    try:
        band = _prv_band(merged, delta, eps_error, max_grid_points)
    except (RuntimeError, MemoryError, ValueError, OverflowError, FloatingPointError) as exc:
        return _fallback(merged, delta, f"{type(exc).__name__}: {exc}")
    logger.debug(
        "PRV eps band %s at delta=%g for %d distinct mechanism(s), %d steps, in %.3f s",
        band, delta, len(merged), sum(m.steps for m in merged), time.perf_counter() - started,
    )
    lower, _, upper = band
    if not all(math.isfinite(v) for v in band):
        return _fallback(merged, delta, f"non-finite PRV band {band}")

    if all(m.sample_rate == 1.0 for m in merged):
        exact = gaussian_epsilon(composed_gaussian_mu(merged), delta)
        if not lower - 1e-9 <= exact <= upper + 1e-9:
            return _fallback(merged, delta, f"PRV band {band} excludes the exact Gaussian eps {exact}")
    else:
        reference = rdp_epsilon(merged, delta)
        if lower > reference + 1e-9:
            return _fallback(merged, delta, f"PRV lower bound {lower} exceeds the RDP upper bound {reference}")
    return _clamped(*band, delta)
