"""Rényi DP accounting of the Poisson-subsampled Gaussian.

Used beside the PRV accountant in reports, and as its sound fallback when the PRV
numerics fail. Every figure here is an upper bound on the true epsilon.

References:
    Mironov 2017, "Rényi Differential Privacy" (composition: Prop. 1).
    Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
    Mechanism" (RDP of one step, Sec. 3.3).
    Balle, Barthe, Gaboardi, Hsu, Sato 2020, "Hypothesis Testing Interpretations and
    Rényi Differential Privacy" (conversion to (eps, delta): Thm. 21).

This is Opacus's RDP analysis (``opacus.accountants.analysis.rdp``: ``compute_rdp``
then ``get_privacy_spent``, the same orders-wise conversion) without importing
``opacus``, whose package import pulls in ``torch.distributed``, which ``accounting``
must not: the per-step formula comes from ``prv_accountant`` (the same TF-Privacy
code of Mironov et al. 2019 that Opacus carries); the tests check both agree.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence

import numpy as np
from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism

from .mechanisms import Mechanism, accounted_history

__all__ = [
    "DEFAULT_ORDERS",
    "PerStepRDP",
    "check_delta",
    "per_step_rdp",
    "subsampled_gaussian_rdp",
    "compose_rdp",
    "rdp_to_epsilon",
    "rdp_epsilon",
]

logger = logging.getLogger(__name__)

#: Opacus's default grid (1.1 .. 10.9 by 0.1, then 12 .. 63) plus orders near 1
#: (large eps) and larger orders (small eps). Any grid gives a valid bound.
DEFAULT_ORDERS: tuple[float, ...] = (
    (1.01, 1.02, 1.03, 1.05, 1.075)
    + tuple(1.0 + x / 10.0 for x in range(1, 100))
    + tuple(float(a) for a in range(12, 64))
    + (64.0, 80.0, 96.0, 128.0, 192.0, 256.0)
)


def check_delta(delta: float) -> float:
    """``delta`` as a float, or a ValueError naming it and the range (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)):
        raise ValueError(f"delta must be a real number in (0, 1), got {delta!r}")
    if not 0.0 < float(delta) < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def _check_orders(orders: Sequence[float]) -> np.ndarray:
    orders_arr = np.asarray(orders, dtype=float)
    if orders_arr.ndim != 1 or orders_arr.size == 0 or not np.all(orders_arr > 1.0):
        raise ValueError(f"orders must be a non-empty 1-D sequence of numbers > 1, got {orders!r}")
    return orders_arr


def subsampled_gaussian_rdp(noise_multiplier: float, sample_rate: float, order: float) -> float:
    """RDP of order ``order`` of ONE step of the Poisson-subsampled Gaussian.

    Mironov, Talwar, Zhang 2019, Sec. 3.3: ``log(A_alpha) / (alpha - 1)``, with the
    binomial expansion for integer alpha and the two-sided erfc series for fractional
    alpha; at ``sample_rate == 1`` it is the Gaussian's ``alpha / (2 sigma^2)``
    (Mironov 2017, Prop. 7). The remove direction is used, which dominates the add
    direction for RDP (Mironov et al. 2019, Thm. 5).

    Returns ``inf`` if the series fails numerically at this order (any order left out
    still gives a valid bound downstream).
    """
    prv = PoissonSubsampledGaussianMechanism(sampling_probability=sample_rate, noise_multiplier=noise_multiplier)
    try:
        value = float(prv.rdp(float(order)))
    except (ValueError, OverflowError, ZeroDivisionError, FloatingPointError) as exc:
        logger.debug("RDP series failed at order %s (sigma=%s, q=%s): %s", order, noise_multiplier, sample_rate, exc)
        return math.inf
    return value if not math.isnan(value) else math.inf


def per_step_rdp(noise_multiplier: float, sample_rate: float, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP curve of ONE step of the Poisson-subsampled Gaussian at every order."""
    orders_arr = _check_orders(orders)
    return np.array([subsampled_gaussian_rdp(noise_multiplier, sample_rate, a) for a in orders_arr])


#: ``(noise_multiplier, sample_rate) -> per-step RDP curve on DEFAULT_ORDERS``; a cache
#: (see :class:`accounting.prv.PRVComposer`) may stand in for :func:`per_step_rdp`.
PerStepRDP = Callable[[float, float], np.ndarray]


def compose_rdp(
    mechanisms: Sequence[Mechanism],
    orders: Sequence[float] = DEFAULT_ORDERS,
    *,
    per_step: Optional[PerStepRDP] = None,
) -> np.ndarray:
    """RDP curve of the heterogeneous composition: ``sum_i steps_i * rdp_i`` (Mironov 2017, Prop. 1).

    Mechanisms enter in their canonical accounted form
    (:func:`accounting.mechanisms.accounted_history`). ``per_step`` (only with the
    default orders) replaces :func:`per_step_rdp`, e.g. by a cached version.
    """
    orders_arr = _check_orders(orders)
    if per_step is not None and tuple(orders_arr) != DEFAULT_ORDERS:
        raise ValueError("per_step is only allowed with the default orders")
    total = np.zeros_like(orders_arr)
    for mechanism in accounted_history(mechanisms):
        if per_step is None:
            curve = per_step_rdp(mechanism.noise_multiplier, mechanism.sample_rate, orders_arr)
        else:
            curve = per_step(mechanism.noise_multiplier, mechanism.sample_rate)
        total = total + curve * mechanism.steps
    return total


def rdp_to_epsilon(rdp: Sequence[float], orders: Sequence[float], delta: float) -> tuple[float, float]:
    """Convert an RDP curve to (eps, best order) at ``delta``; eps is an upper bound.

    Balle et al. 2020, Thm. 21: an (alpha, r)-RDP mechanism is (eps, delta)-DP with
    ``eps = r + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1)``;
    take the minimum over orders. Clamped at 0 ((eps<0, delta)-DP implies (0, delta)-DP).
    Returns ``(inf, nan)`` when every order is infinite.
    """
    delta = check_delta(delta)
    orders_arr = _check_orders(orders)
    rdp_arr = np.asarray(rdp, dtype=float)
    if rdp_arr.shape != orders_arr.shape:
        raise ValueError(f"rdp must have the same length as orders ({orders_arr.size}), got shape {rdp_arr.shape}")
    with np.errstate(invalid="ignore"):
        eps = rdp_arr + np.log1p(-1.0 / orders_arr) - (math.log(delta) + np.log(orders_arr)) / (orders_arr - 1.0)
    eps = np.where(np.isnan(eps), np.inf, eps)
    best = int(np.argmin(eps))
    if not math.isfinite(eps[best]):
        return math.inf, math.nan
    return max(0.0, float(eps[best])), float(orders_arr[best])


def rdp_epsilon(
    mechanisms: Sequence[Mechanism],
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
    *,
    per_step: Optional[PerStepRDP] = None,
) -> float:
    """Epsilon at ``delta`` of the composition of ``mechanisms`` via RDP (upper bound).

    Zero total steps gives 0.
    """
    delta = check_delta(delta)
    if not accounted_history(mechanisms):
        return 0.0
    eps, order = rdp_to_epsilon(compose_rdp(mechanisms, orders, per_step=per_step), orders, delta)
    logger.debug("RDP epsilon %.6g at delta=%g (best order %s)", eps, delta, order)
    return eps
