"""Rényi DP of the (distributed, Poisson-subsampled) multi-dimensional Skellam mechanism.

Pure functions of numbers; :mod:`accounting.budget` applies them to ledger records.
Convention: Sk(mu) := Pois(mu) - Pois(mu), an integer noise of variance 2 mu per
coordinate (what :class:`accounting.mechanisms.DistributedSkellam` records).

* :func:`skellam_rdp`: one release, Agarwal, Kairouz, Liu, NeurIPS 2021 (the paper's
  RDP bound for the multi-dimensional Skellam mechanism);
* :func:`poisson_subsampled_rdp`: the release on a Poisson subsample, by the general
  upper bound of Zhu & Wang, ICML 2019, which needs integer orders and nothing of the
  mechanism but its RDP curve;
* :func:`compose_curves`: composition adds RDP curves order by order (Mironov 2017,
  Prop. 1), summed in a canonical order so that a figure is a function of the multiset
  of releases alone;
* :func:`skellam_epsilon`: (eps, delta) by the conversion of :func:`accounting.rdp.rdp_to_epsilon`
  (Balle et al. 2020, Thm. 21).

Orders are the integers :data:`SKELLAM_ORDERS` = 2..256: the Skellam bound and the
subsampling bound hold at integer orders, and the subsampling bound at order alpha
needs the curve at every integer order 2..alpha.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Sequence

import numpy as np
from scipy.special import gammaln, logsumexp

from .rdp import check_delta, rdp_to_epsilon

__all__ = [
    "SKELLAM_ORDERS",
    "compose_curves",
    "poisson_subsampled_rdp",
    "skellam_epsilon",
    "skellam_rdp",
    "skellam_rdp_curve",
]

#: Integer RDP orders 2, 3, ..., 256 (contiguous: see :func:`poisson_subsampled_rdp`).
SKELLAM_ORDERS: tuple[int, ...] = tuple(range(2, 257))


def _positive(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 < float(value) < math.inf):
        raise ValueError(f"{field} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_orders(orders: Sequence[int]) -> np.ndarray:
    """Orders as a float array; they must be 2, 3, ..., A (contiguous integers from 2)."""
    arr = np.asarray(orders, dtype=float)
    if arr.ndim != 1 or arr.size == 0 or not np.array_equal(arr, np.arange(2, arr.size + 2, dtype=float)):
        raise ValueError(f"orders must be the integers 2, 3, ..., A (contiguous, from 2), got {orders!r}")
    return arr


def skellam_rdp(mu: float, l1_sensitivity: float, l2_sensitivity: float, order: int) -> float:
    """RDP at integer ``order`` of one release of the multi-dimensional Skellam mechanism.

    Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
    Learning", NeurIPS 2021, RDP bound of the multi-dimensional Skellam mechanism
    (Theorem 3.5 of arXiv:2110.04995v2; the same bound, in the scaled form, is
    ``_skellam_rdp`` of google-research/federated ``distributed_dp/accounting_utils.py``).
    For a query with L1 and L2 sensitivities Delta_1, Delta_2 (integer-valued) and
    noise Sk(mu) = Pois(mu) - Pois(mu) per coordinate (variance 2 mu), for every
    integer alpha > 1 (the paper also allows real alpha > 1):

        eps(alpha) <= alpha Delta_2^2 / (4 mu)
                      + min( ((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (16 mu^2),  3 Delta_1 / (4 mu) )

    (the paper writes it with variance V = 2 mu: alpha Delta_2^2 / (2V) + min(((2 alpha -
    1) Delta_2^2 + 6 Delta_1) / (4 V^2), 3 Delta_1 / (2V))). The first term is the
    Gaussian mechanism's RDP at the same variance; the second vanishes as mu grows.
    """
    mu = _positive("mu", mu)
    l1 = _positive("l1_sensitivity", l1_sensitivity)
    l2 = _positive("l2_sensitivity", l2_sensitivity)
    if isinstance(order, bool) or not isinstance(order, numbers.Real) or float(order) != int(order) or order < 2:
        raise ValueError(f"order must be an integer >= 2, got {order!r}")
    alpha = float(order)
    gaussian = alpha * l2 * l2 / (4.0 * mu)
    surcharge = min(((2.0 * alpha - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu), 3.0 * l1 / (4.0 * mu))
    return gaussian + surcharge


def skellam_rdp_curve(
    mu: float, l1_sensitivity: float, l2_sensitivity: float, orders: Sequence[int] = SKELLAM_ORDERS
) -> np.ndarray:
    """:func:`skellam_rdp` at every order (vectorised, the same arithmetic)."""
    mu = _positive("mu", mu)
    l1 = _positive("l1_sensitivity", l1_sensitivity)
    l2 = _positive("l2_sensitivity", l2_sensitivity)
    alpha = _check_orders(orders)
    gaussian = alpha * l2 * l2 / (4.0 * mu)
    surcharge = np.minimum(((2.0 * alpha - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu), 3.0 * l1 / (4.0 * mu))
    return gaussian + surcharge


def poisson_subsampled_rdp(curve: Sequence[float], sample_rate: float) -> np.ndarray:
    """RDP at orders 2..A of a mechanism run on a Poisson subsample of rate ``sample_rate``.

    Zhu & Wang, "Poisson Subsampled Rényi Differential Privacy", ICML 2019 (PMLR 97),
    Theorem 6 (general upper bound; the same bound is "Theorem 5" in
    google-research's ``_compute_rdp_subsampled`` and ``compose_poisson_subsampled_mechanisms1``
    in their autodp): if M is (l, eps(l))-RDP for every integer l in 2..alpha, then
    M o PoissonSample_gamma satisfies, at integer alpha >= 2,

        eps'(alpha) <= 1/(alpha-1) log( (1-gamma)^(alpha-1) (alpha gamma - gamma + 1)
                                        + C(alpha,2) gamma^2 (1-gamma)^(alpha-2) e^(eps(2))
                                        + 3 sum_{l=3}^{alpha} C(alpha,l) gamma^l (1-gamma)^(alpha-l) e^((l-1) eps(l)) ).

    Computed in log space (``logsumexp``). Subsampling never hurts (by joint convexity of
    exp((alpha-1) D_alpha) over the coupled subsamples), so the result is the minimum of
    that bound and ``curve``; at ``sample_rate == 1`` it is ``curve`` itself.

    Args:
        curve: eps(l) at the orders 2, 3, ..., A (index i is order i + 2); inf allowed.
        sample_rate: gamma, in (0, 1].
    """
    eps = np.asarray(curve, dtype=float)
    if eps.ndim != 1 or eps.size == 0 or np.isnan(eps).any() or (eps < 0).any():
        raise ValueError(f"curve must be a non-empty 1-D array of RDP values >= 0 at orders 2..A, got {curve!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or not 0.0 < float(sample_rate) <= 1.0:
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    gamma = float(sample_rate)
    if gamma == 1.0:
        return eps.copy()
    alphas = np.arange(2, eps.size + 2, dtype=float)[:, None]  # rows: alpha
    ls = np.arange(2, eps.size + 2, dtype=float)[None, :]  # columns: l
    log_gamma, log_rest = math.log(gamma), math.log1p(-gamma)
    with np.errstate(invalid="ignore", over="ignore"):
        log_binom = gammaln(alphas + 1.0) - gammaln(ls + 1.0) - gammaln(np.maximum(alphas - ls, 0.0) + 1.0)
        terms = log_binom + ls * log_gamma + (alphas - ls) * log_rest + (ls - 1.0) * eps[None, :]
    terms = terms + np.where(ls >= 3.0, math.log(3.0), 0.0)
    terms = np.where(ls <= alphas, terms, -np.inf)
    first = (alphas[:, 0] - 1.0) * log_rest + np.log1p((alphas[:, 0] - 1.0) * gamma)
    total = logsumexp(np.column_stack([first, terms]), axis=1)
    bound = total / (alphas[:, 0] - 1.0)
    return np.minimum(bound, eps)


def compose_curves(parts: Iterable[tuple[Sequence[float], int]]) -> np.ndarray:
    """Sum of ``steps * curve`` over ``parts``, in the order given (Mironov 2017, Prop. 1).

    Callers pass ``parts`` in a canonical order (sorted by the releases' parameters) so
    that the floating-point sum, and every figure read from it, depends on the multiset
    of releases only. Empty: the zero curve on :data:`SKELLAM_ORDERS`.
    """
    total = None
    for index, (curve, steps) in enumerate(parts):
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"parts[{index}] steps must be an integer >= 0, got {steps!r}")
        values = np.asarray(curve, dtype=float) * int(steps)
        if total is None:
            total = values
        elif total.shape != values.shape:
            raise ValueError(f"parts[{index}] has {values.size} orders, the first part {total.size}")
        else:
            total = total + values
    return np.zeros(len(SKELLAM_ORDERS)) if total is None else total


def skellam_epsilon(curve: Sequence[float], delta: float, orders: Sequence[int] = SKELLAM_ORDERS) -> tuple[float, float]:
    """(eps, best order) at ``delta`` of a composed RDP curve: :func:`accounting.rdp.rdp_to_epsilon`.

    A zero curve (nothing released) gives ``(0.0, nan)``.
    """
    delta = check_delta(delta)
    arr = np.asarray(curve, dtype=float)
    orders_arr = _check_orders(orders)
    if arr.shape != orders_arr.shape:
        raise ValueError(f"curve must have one value per order ({orders_arr.size}), got shape {arr.shape}")
    if not arr.any():
        return 0.0, math.nan
    return rdp_to_epsilon(arr, orders_arr, delta)
