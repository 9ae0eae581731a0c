"""Tight (eps, delta) of composed mechanisms via privacy random variables (PRVs).

Gopi, Lee, Wutschitz 2021, "Numerical Composition of Differential Privacy" (NeurIPS):
each mechanism's privacy loss is a random variable; composition adds them; a
discretised, truncated PRV is composed by FFT and gives ``eps`` with a certified band
``[lower, upper]`` of half-width ``eps_error`` (their Thm. 5.5), at the cost of
``delta_error`` in delta. ``upper`` is the guarantee to report.

**Tolerance relative to eps.** The band's half-width is ``max(relative_eps_error *
eps, eps_error)`` (defaults 0.4% of eps, floor 1e-5): an absolute half-width (0.01
until issue 11) put up to 5% of slack on every eps below 1; above eps = 2.5 the band is
now wider than 0.01, and still within 0.4% of eps. eps is not known before
the query, so the mesh is sized in two stages, both deterministic functions of the
canonical history (:func:`mesh_level`): first from the RDP bound (never below the
truth, so that grid is never finer than needed), then, if that grid's estimate asks
for a finer one, from the estimate. The certified half-width for ``T`` steps on a mesh
``h`` is ``h * sqrt(T / 2 * log(12 / delta_error))`` (Gopi et al. Thm. 5.5 for ``T``
compositions on a domain safe for ``capacity >= T``: :func:`certified_eps_error`);
meshes are powers of ``2**(1/4)``, so a grid serves many rounds. Reported
``upper <= eps * (1 + relative_eps_error) + eps(delta - delta_error) - eps(delta)``:
within 0.5% of the truth on the settings of ``tests/accounting/test_tightness.py``.

How it is computed here, and why:

* **Discretisation** is prv_accountant's, step for step as ``PRVAccountant.__init__``
  does it: truncate each mechanism's PRV to the domain ``[-L, L]``
  (``PrivacyRandomVariableTruncated``), cell-centred discretisation with its
  mean-preserving shift (``discretisers.CellCentred``), on ``Domain.create_aligned``.
* **The grid** (mesh and ``L``) is a function of the history's *canonical form* only
  (:func:`choose_grid`): the mesh certifies ``eps_error`` for ``capacity`` (the total
  number of steps rounded up to ``2**k`` or ``3 * 2**k``; Thm. 5.5), ``L`` is the safe
  domain of Remark 5.6 for ``capacity`` steps of the history's mechanisms, rounded up
  to 1/8 of an octave and then to an FFT-friendly grid length. A finer mesh or a wider domain than needed only makes the
  bound tighter or safer, and a grid so chosen is shared by every history of the same
  capacity: a run re-queries cached discretisations instead of rebuilding them.
* **Composition** multiplies the mechanisms' spectra on that shared grid (circular
  convolution, as prv_accountant's ``Fourier`` composer does for one mechanism,
  extended to several) in float64, and ``eps`` is read off the composed PMF as in
  ``DiscretePrivacyRandomVariable.compute_epsilon``. float64 instead of long double
  makes a query ~4x faster; a guard (as prv_accountant's own) refuses a grid on which
  float64 rounding could approach ``delta_error``.

Every figure is therefore a deterministic function of the multiset of releases: the
server's running figure (:class:`PRVComposer`, cached) and an auditor's recomputation
(:func:`prv_epsilon`, cold) agree to the last bit.

When the PRV numerics cannot be trusted (prv_accountant raises "Discrete mean differs
from continuous mean significantly" at high eps, the grid would exceed
``max_grid_points``: long histories, eps near 0, or the answer contradicts an
independent bound) we fall back to a sound bound and say so in
:attr:`EpsilonBound.method`:

* every mechanism at ``sample_rate == 1``: the exact composition of Gaussians
  (Balle & Wang 2018; Dong, Roth, Su 2019) -> ``"analytic_gaussian"``;
* otherwise dp_accounting's pessimistic connect-the-dots PLD, refined to the same
  relative tolerance (:mod:`accounting.pld`) -> ``"pld"``;
* and if that fails too, Rényi DP (:mod:`accounting.rdp`) -> ``"rdp"``.

The PRV of the Poisson-subsampled Gaussian in prv_accountant is the *remove*
direction ((1-q)N(0,s^2) + qN(1,s^2) against N(0,s^2)), as in Gopi et al. and Opacus.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np
from prv_accountant.discretisers import CellCentred
from prv_accountant.domain import Domain
from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism, PrivacyRandomVariableTruncated
from scipy.fft import irfft, next_fast_len, rfft
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from .mechanisms import Mechanism, PoissonSubsampledGaussian, accounted_history
from .pld import DEFAULT_MAX_PLD_POINTS, PLDAccountant, pld_epsilon
from .rdp import DEFAULT_ORDERS, check_delta, per_step_rdp, rdp_epsilon, rdp_to_epsilon

__all__ = [
    "METHOD_PRV",
    "METHOD_PLD",
    "METHOD_RDP",
    "METHOD_ANALYTIC_GAUSSIAN",
    "METHOD_NONE",
    "DEFAULT_EPS_ERROR",
    "DEFAULT_MAX_GRID_POINTS",
    "DEFAULT_RELATIVE_EPS_ERROR",
    "EpsilonBound",
    "PRVComposer",
    "PRVGrid",
    "certified_eps_error",
    "choose_grid",
    "grid_for_mesh",
    "mesh_level",
    "composed_gaussian_mu",
    "gaussian_delta",
    "gaussian_epsilon",
    "prv_epsilon",
]

logger = logging.getLogger(__name__)

METHOD_PRV = "prv"
METHOD_PLD = "pld"
METHOD_RDP = "rdp"
METHOD_ANALYTIC_GAUSSIAN = "analytic_gaussian"
METHOD_NONE = "none"  # nothing was released: eps = 0

#: Half-width of the certified band ``[lower, upper]`` relative to ``eps``. 0.4% leaves
#: room under a 1% tightness target for the ``delta_error`` shift (~0.05%), the mesh
#: being sized from an estimate, and the reference's own discretisation; a grid costs
#: in proportion to 1 / relative_eps_error.
DEFAULT_RELATIVE_EPS_ERROR = 0.004

#: Absolute floor of the band's half-width: what counts for eps near 0, where a
#: relative band would ask for an unbounded grid. 1e-5 is 1% of eps = 1e-3, below any
#: figure's printed precision.
DEFAULT_EPS_ERROR = 1e-5

#: Largest PRV grid we attempt, in points summed over the distinct mechanisms. The
#: discretisation (prv_accountant, long double) costs ~1 us and ~200 bytes a point at
#: its peak: 2**19 points is ~0.5 s and ~100 MB once per grid. Larger compositions go
#: to the PLD (:mod:`accounting.pld`), which is as tight and faster there.
DEFAULT_MAX_GRID_POINTS = 2**19

#: Meshes are powers of 2**(1 / MESH_STEPS_PER_OCTAVE) (<= 19% finer than needed).
MESH_STEPS_PER_OCTAVE = 4

#: Discretised PRVs a :class:`PRVComposer` keeps (16 bytes per grid point each).
DEFAULT_CACHE_BYTES = 512 * 2**20

#: delta_error = delta * DELTA_ERROR_FRACTION (the choice of prv_accountant and Opacus).
DELTA_ERROR_FRACTION = 1e-3

#: The safe half-width L is rounded up to 2**(k / L_STEPS_PER_OCTAVE) so that a grid
#: serves many histories (<= 9% more points than needed).
L_STEPS_PER_OCTAVE = 8

#: exp(t) must stay finite in float64 over [-L, L].
MAX_HALF_WIDTH = 700.0

PRVFailure = (RuntimeError, MemoryError, ValueError, OverflowError, FloatingPointError)
PLDFailure = (RuntimeError, MemoryError, ValueError, OverflowError, FloatingPointError, ZeroDivisionError)

class PRVUnavailable(RuntimeError):
    """The PRV computation was not attempted or its result was rejected."""


@dataclass(frozen=True)
class EpsilonBound:
    """Epsilon at ``delta`` with its certified band.

    ``lower <= true eps <= upper`` for ``method == "prv"`` (Gopi et al. 2021, Thm. 5.5);
    ``estimate`` is the point estimate. For the fallbacks (``"pld"``, ``"rdp"``,
    ``"analytic_gaussian"``) and ``"none"``, ``lower == estimate == upper``: for
    ``"pld"`` and ``"rdp"`` it is an upper bound only (the true eps may be smaller;
    ``"pld"`` is within its tolerance of it, :mod:`accounting.pld`); for
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


def _check_relative_eps_error(relative_eps_error: float) -> float:
    value = relative_eps_error
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= float(value) <= 0.1:
        raise ValueError(f"relative_eps_error must be a real number in [0, 0.1], got {value!r}")
    return float(value)


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


# ------------------------------------------------------------------------------ the grid


def grid_capacity(total_steps: int) -> int:
    """The number of compositions a grid certifies: the smallest ``2**k`` or ``3 * 2**k`` >= ``total_steps``.

    Consecutive capacities are at most 1.5x apart, so a grid has at most
    ``sqrt(1.5) - 1`` = 22% more points than ``total_steps`` alone would need.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    power = 1 << (total_steps - 1).bit_length()
    return 3 * power // 4 if power >= 4 and 3 * power // 4 >= total_steps else power


def mesh_size(capacity: int, eps_error: float, delta_error: float) -> float:
    """Grid spacing that certifies ``eps_error`` for ``capacity`` compositions.

    Gopi et al. 2021, Thm. 5.5 (as in ``PRVAccountant``):
    ``eps_error / sqrt(capacity / 2 * log(12 / delta_error))``.
    """
    return eps_error / math.sqrt(capacity / 2.0 * math.log(12.0 / delta_error))


def certified_eps_error(mesh: float, steps: int, delta_error: float) -> float:
    """Half-width of the eps band that a mesh certifies for ``steps`` compositions: the inverse of :func:`mesh_size`.

    Gopi et al. 2021, Thm. 5.5: ``mesh * sqrt(steps / 2 * log(12 / delta_error))``, on a
    domain safe for at least ``steps`` compositions.
    """
    return mesh * math.sqrt(steps / 2.0 * math.log(12.0 / delta_error))


def mesh_level(target_eps_error: float, steps: int, delta_error: float) -> int:
    """The coarsest mesh ``2**(k / MESH_STEPS_PER_OCTAVE)`` that certifies ``target_eps_error`` for ``steps``: k.

    Rounding to a power of ``2**(1/4)`` makes the mesh, hence the grid, the same for
    many histories, so a growing history re-queries cached discretisations.
    """
    if not (target_eps_error > 0.0 and math.isfinite(target_eps_error)):
        raise PRVUnavailable(f"no mesh for a target half-width of {target_eps_error!r}")
    return math.floor(math.log2(mesh_size(steps, target_eps_error, delta_error)) * MESH_STEPS_PER_OCTAVE)


def safe_half_width(
    per_step_curves: Sequence[np.ndarray], capacity: int, eps_error: float, delta_error: float
) -> float:
    """Half-width L of a domain [-L, L] that holds any composition of ``capacity`` steps of these mechanisms.

    Gopi et al. 2021, Remark 5.6, as ``prv_accountant.accountant.compute_safe_domain_size``:
    the RDP epsilon of the composition at ``delta_error / 4``, and of one step of each
    mechanism at ``delta_error / (8 * capacity)``, whichever is larger, plus 3. The
    composition's RDP curve is bounded by ``capacity`` times the pointwise largest
    per-step curve, whatever the mix of mechanisms (RDP adds up: Mironov 2017, Prop. 1),
    so L depends on the set of mechanisms and the capacity only, and one grid serves a
    history as it grows. Curves are Opacus's orders (:data:`accounting.rdp.DEFAULT_ORDERS`).
    """
    envelope = np.max(np.vstack(per_step_curves), axis=0)
    half_width, _ = rdp_to_epsilon(envelope * capacity, DEFAULT_ORDERS, delta_error / 4.0)
    for curve in per_step_curves:
        half_width = max(half_width, rdp_to_epsilon(curve, DEFAULT_ORDERS, delta_error / 8.0 / capacity)[0])
    return max(half_width, eps_error) + 3.0


def _fft_friendly_half_width(safe: float, mesh: float) -> tuple[float, int]:
    """Enlarge the domain [-L, L] so that its aligned grid length is even and 5-smooth.

    ``Domain.create_aligned(-L, L, mesh)`` with ``L = (n - 1/2) * mesh`` has ``2n + 2``
    points; a length with a large prime factor makes the FFT up to ~15x slower. A
    larger L than the safe one only truncates less. Returns ``(L, number of points)``.
    """
    n = math.ceil(safe / mesh + 0.5)
    size = next_fast_len(2 * n + 2, real=True)
    while size % 2:
        size = next_fast_len(size + 1, real=True)
    n = size // 2 - 1
    return (n - 0.5) * mesh, size


@dataclass(frozen=True)
class PRVGrid:
    """One discretisation of the PRV domain, shared by every mechanism composed on it."""

    capacity: int
    eps_error: float
    delta_error: float
    half_width: float
    mesh: float
    size: int
    t_min: float

    def domain(self) -> Domain:
        """prv_accountant's aligned domain for this grid."""
        domain = Domain.create_aligned(-self.half_width, self.half_width, self.mesh)
        if len(domain) != self.size:
            raise AssertionError(f"aligned domain has {len(domain)} points, expected {self.size}")
        return domain


def choose_grid(
    history: Sequence[PoissonSubsampledGaussian],
    delta: float,
    eps_error: float,
    per_step_curves: Sequence[np.ndarray],
) -> PRVGrid:
    """The grid certifying the absolute half-width ``eps_error`` for a canonical history's capacity.

    ``capacity`` = :func:`grid_capacity` of the total steps; mesh by Thm. 5.5 for
    ``capacity`` (:func:`mesh_size`); the domain as :func:`grid_for_mesh`.
    Depends on nothing but its arguments.
    """
    capacity = grid_capacity(sum(m.steps for m in history))
    mesh = mesh_size(capacity, eps_error, delta * DELTA_ERROR_FRACTION)
    return _build_grid(capacity, delta, eps_error, mesh, per_step_curves)


def grid_for_mesh(
    history: Sequence[PoissonSubsampledGaussian],
    delta: float,
    mesh: float,
    per_step_curves: Sequence[np.ndarray],
) -> PRVGrid:
    """The grid of spacing ``mesh`` for a canonical history (:func:`accounting.mechanisms.accounted_history`).

    ``capacity`` = :func:`grid_capacity` of the total steps, ``eps_error`` what the mesh
    certifies for ``capacity`` steps (:func:`certified_eps_error`); L by
    :func:`safe_half_width` for the history's mechanisms at ``capacity`` steps, rounded
    up to ``2**(k/8)``, then to an FFT-friendly length. Depends on nothing but its arguments.
    """
    capacity = grid_capacity(sum(m.steps for m in history))
    eps_error = certified_eps_error(mesh, capacity, delta * DELTA_ERROR_FRACTION)
    return _build_grid(capacity, delta, eps_error, mesh, per_step_curves)


def _build_grid(capacity: int, delta: float, eps_error: float, mesh: float, per_step_curves: Sequence[np.ndarray]) -> PRVGrid:
    delta_error = delta * DELTA_ERROR_FRACTION
    needed = safe_half_width(per_step_curves, capacity, eps_error, delta_error)
    if not needed <= MAX_HALF_WIDTH:
        raise PRVUnavailable(f"safe PRV domain half-width {needed:.4g} exceeds {MAX_HALF_WIDTH}")
    rounded = 2.0 ** (math.ceil(math.log2(needed) * L_STEPS_PER_OCTAVE) / L_STEPS_PER_OCTAVE)
    half_width, size = _fft_friendly_half_width(rounded, mesh)
    t_min = float(Domain.create_aligned(-half_width, half_width, mesh).t_min())
    return PRVGrid(capacity, eps_error, delta_error, half_width, mesh, size, t_min)


# ------------------------------------------------------------------ discretise, compose, read


@dataclass(frozen=True)
class DiscretePRV:
    """One mechanism's discretised PRV on a grid, kept as its spectrum."""

    spectrum: np.ndarray  # rfft of the PMF on the grid (complex128)
    shift: float  # prv_accountant's mean-preserving shift of the domain
    log_pmc_inf: float  # log(1 - probability mass at +infinity)


def discretise(mechanism: PoissonSubsampledGaussian, grid: PRVGrid) -> DiscretePRV:
    """prv_accountant's discretisation of one step of ``mechanism``, as in ``PRVAccountant``.

    Raises prv_accountant's ``RuntimeError("Discrete mean differs from continuous mean
    significantly.")`` when the truncated PRV's mean cannot be matched on this grid.
    """
    domain = grid.domain()
    prv = PoissonSubsampledGaussianMechanism(
        sampling_probability=mechanism.sample_rate, noise_multiplier=mechanism.noise_multiplier
    )
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truncated = PrivacyRandomVariableTruncated(prv, domain.t_min(), domain.t_max())
        discrete = CellCentred().discretise(truncated, domain)
    pmf = np.asarray(discrete.pmf, dtype=np.float64)
    return DiscretePRV(rfft(pmf), float(discrete.domain.shifts()), float(discrete.log_pmc_inf))


def compose(parts: Sequence[tuple[DiscretePRV, int]], grid: PRVGrid) -> tuple[np.ndarray, float, float]:
    """PMF of the composition of ``steps`` runs of each part: ``(pmf, t_min, log_pmc_inf)``.

    The spectra's product is the circular convolution on the shared grid, as
    prv_accountant's ``Fourier`` composer: the sum of n variables on grids
    ``t_min + s_i + j * mesh`` lives on ``n * t_min + S + j * mesh`` (S = sum of the
    shifts); rolling by ``(n - 1) * t_min / mesh`` puts it back on the window
    ``t_min + S + k * mesh``. The domain is safe for ``capacity`` steps, so nothing of
    weight wraps around.
    """
    total = sum(n for _, n in parts)
    product = None
    for part, n in parts:
        power = part.spectrum**n
        product = power if product is None else product * power
    pmf = irfft(product, n=grid.size)
    offset = round(-grid.t_min / grid.mesh)
    pmf = np.roll(pmf, -((total - 1) * offset) % grid.size)
    t_min = grid.t_min + sum(part.shift * n for part, n in parts)
    log_pmc_inf = sum(part.log_pmc_inf * n for part, n in parts)
    return pmf, t_min, log_pmc_inf


def epsilon_band(
    pmf: np.ndarray, t_min: float, mesh: float, log_pmc_inf: float, delta: float, delta_error: float, eps_error: float
) -> tuple[float, float, float]:
    """(lower, estimate, upper) eps at ``delta`` of a discrete PRV.

    prv_accountant's ``DiscretePrivacyRandomVariable.compute_epsilon`` in float64:
    ``delta(t) = sum_{s >= t} p_s (1 - e^(t - s))``; ``upper = eps(delta - delta_error)
    + eps_error``, ``lower = eps(delta + delta_error) - eps_error`` (Gopi et al. Thm.
    5.5). The crossing is the *last* grid point where delta(t) exceeds the target,
    so rounding noise in the far left tail can only raise the figures.
    """
    delta_inf = -math.expm1(log_pmc_inf)
    delta_fin = (delta - delta_inf) / (1.0 - delta_inf)
    if delta_fin <= delta_error:
        raise PRVUnavailable(f"mass at infinity {delta_inf:.3g} leaves no room for delta={delta:g}")
    if np.finfo(np.float64).eps * pmf.size > delta_fin - delta_error:
        raise PRVUnavailable(f"float64 rounding over {pmf.size} grid points could reach delta={delta:g}")
    t = t_min + mesh * np.arange(pmf.size)
    tail_mass = np.cumsum(pmf[::-1])[::-1]
    tail_weighted = np.cumsum((pmf * np.exp(-t))[::-1])[::-1]
    minus_delta = np.exp(t) * tail_weighted - tail_mass

    def epsilon_at(target: float) -> float:
        above = np.flatnonzero(minus_delta < -target)
        if above.size == 0:
            raise RuntimeError("Cannot compute epsilon")
        i = int(above[-1]) + 1
        return float(np.log((tail_mass[i] - target) / tail_weighted[i]))

    upper = epsilon_at(delta_fin - delta_error) + eps_error
    lower = epsilon_at(delta_fin + delta_error) - eps_error
    estimate = epsilon_at(delta_fin)
    return lower, estimate, upper


# ------------------------------------------------------------------------------ composer


class PRVComposer:
    """Epsilon of histories, with discretised PRVs cached per grid.

    Keep one per run (the server) or per audit: re-querying a grown history costs one
    or two FFTs on cached grids; a grid is built (discretised, ~1 us a point) the
    first time its capacity and mesh are reached, or ahead of time with
    :meth:`prepare`. Figures do not depend on the cache: :meth:`epsilon` equals
    :func:`prv_epsilon` to the last bit.

    Args:
        eps_error: absolute floor of the band's half-width, in (0, 1]; with
            ``relative_eps_error == 0`` the half-width itself (prv_accountant's
            ``eps_error``, the grid sized for the history's capacity).
        relative_eps_error: half-width relative to eps, in [0, 0.1]; 0 turns it off.
        max_grid_points: cap on a grid's points summed over distinct mechanisms;
            larger compositions fall back (memory/time guard).
        max_cache_bytes: discretised PRVs kept, least recently used evicted first.
        max_pld_points: cap on one step's PLD in the PLD fallback.
    """

    def __init__(
        self,
        eps_error: float = DEFAULT_EPS_ERROR,
        *,
        relative_eps_error: float = DEFAULT_RELATIVE_EPS_ERROR,
        max_grid_points: int = DEFAULT_MAX_GRID_POINTS,
        max_cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_pld_points: int = DEFAULT_MAX_PLD_POINTS,
    ) -> None:
        self.eps_error = _check_eps_error(eps_error)
        self.relative_eps_error = _check_relative_eps_error(relative_eps_error)
        for name, value in (("max_grid_points", max_grid_points), ("max_cache_bytes", max_cache_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        self.max_grid_points = max_grid_points
        self.max_cache_bytes = max_cache_bytes
        self._pld = PLDAccountant(max_points=max_pld_points)
        self._rdp_curves: dict[tuple[float, float], np.ndarray] = {}
        self._discrete: OrderedDict[tuple[PRVGrid, float, float], Union[DiscretePRV, Exception]] = OrderedDict()
        self._cached_bytes = 0
        self._warned: set[str] = set()

    # -- public

    def epsilon(self, mechanisms: Sequence[Mechanism], delta: float) -> EpsilonBound:
        """Epsilon at ``delta`` of the composition of ``mechanisms`` (see :func:`prv_epsilon`)."""
        delta = check_delta(delta)
        history = accounted_history(mechanisms)
        if not history:
            return EpsilonBound(lower=0.0, estimate=0.0, upper=0.0, delta=delta, method=METHOD_NONE)
        started = time.perf_counter()
        try:
            band = self._prv_band(history, delta)
        except (PRVUnavailable,) + PRVFailure as exc:
            return self._fallback(history, delta, f"{type(exc).__name__}: {exc}")
        logger.debug(
            "PRV eps band %s at delta=%g for %d distinct mechanism(s), %d steps, in %.3f s",
            band, delta, len(history), sum(m.steps for m in history), time.perf_counter() - started,
        )
        lower, _, upper = band
        if not all(math.isfinite(v) for v in band):
            return self._fallback(history, delta, f"non-finite PRV band {band}")
        if all(m.sample_rate == 1.0 for m in history):
            exact = gaussian_epsilon(composed_gaussian_mu(history), delta)
            if not lower - 1e-9 <= exact <= upper + 1e-9:
                return self._fallback(history, delta, f"PRV band {band} excludes the exact Gaussian eps {exact}")
        else:
            reference = self.rdp_epsilon(history, delta)
            if lower > reference + 1e-9:
                return self._fallback(history, delta, f"PRV lower bound {lower} exceeds the RDP upper bound {reference}")
        return EpsilonBound(
            lower=max(0.0, lower), estimate=max(0.0, band[1]), upper=max(0.0, upper), delta=delta, method=METHOD_PRV
        )

    def rdp_epsilon(self, mechanisms: Sequence[Mechanism], delta: float) -> float:
        """:func:`accounting.rdp.rdp_epsilon` with per-step RDP curves cached."""
        return rdp_epsilon(mechanisms, delta, per_step=self._per_step_rdp)

    def prepare(self, mechanisms: Sequence[Mechanism], delta: float) -> None:
        """Build ahead the grids that the growing prefixes of this history will use.

        For each capacity (:func:`grid_capacity`) up to the history's total steps, takes
        the history scaled (in proportion) to the first and the last step count of
        that capacity, and warms every grid between the meshes those two use (both
        stages). Only speed changes: figures never depend on what is cached.
        """
        history = accounted_history(mechanisms)
        total = sum(m.steps for m in history)
        if not total:
            return
        delta = check_delta(delta)
        capacities = sorted({grid_capacity(n) for n in range(1, grid_capacity(total) + 1)})
        previous = 0
        for capacity in capacities:
            ends = sorted({previous + 1, capacity})
            previous = capacity
            scaled = [tuple(replace(m, steps=max(1, math.ceil(m.steps * n / total))) for m in history) for n in ends]
            try:
                levels = [level for h in scaled for level in self._prv_levels(h, delta)]
                if not levels:  # absolute mode: one grid per capacity, built above
                    continue
                for level in range(min(levels), max(levels) + 1):
                    grid = self._grid(scaled[-1], delta, level)
                    for mechanism in scaled[-1]:
                        self._discretised(mechanism, grid)
            except (PRVUnavailable,) + PRVFailure as exc:
                logger.debug("prepare: capacity %d not warmed (%s)", capacity, exc)

    # -- internals

    def _per_step_rdp(self, noise_multiplier: float, sample_rate: float) -> np.ndarray:
        key = (noise_multiplier, sample_rate)
        if key not in self._rdp_curves:
            self._rdp_curves[key] = per_step_rdp(noise_multiplier, sample_rate)
        return self._rdp_curves[key]

    def _target(self, eps: float) -> float:
        """The band's half-width asked for at ``eps``: ``max(relative_eps_error * eps, eps_error)``."""
        return max(self.relative_eps_error * eps, self.eps_error) if math.isfinite(eps) else math.inf

    def _grid(self, history: Sequence[PoissonSubsampledGaussian], delta: float, level: Union[int, None]) -> PRVGrid:
        """The grid of mesh level ``level`` (:func:`mesh_level`), or ``None``: the absolute ``eps_error`` grid."""
        curves = [self._per_step_rdp(m.noise_multiplier, m.sample_rate) for m in history]
        if level is None:
            grid = choose_grid(history, delta, self.eps_error, curves)
        else:
            grid = grid_for_mesh(history, delta, 2.0 ** (level / MESH_STEPS_PER_OCTAVE), curves)
        if grid.size * len(history) > self.max_grid_points:
            raise PRVUnavailable(
                f"PRV grid of {grid.size} points x {len(history)} distinct mechanism(s) exceeds "
                f"max_grid_points={self.max_grid_points}"
            )
        return grid

    def _discretised(self, mechanism: PoissonSubsampledGaussian, grid: PRVGrid) -> DiscretePRV:
        key = (grid, mechanism.noise_multiplier, mechanism.sample_rate)
        if key in self._discrete:
            self._discrete.move_to_end(key)
            cached = self._discrete[key]
        else:
            try:
                cached = discretise(mechanism, grid)
            except PRVFailure as exc:
                cached = exc  # remembered: a failing grid is not retried every round
            self._discrete[key] = cached
            self._cached_bytes += _nbytes(cached)
            while self._cached_bytes > self.max_cache_bytes and len(self._discrete) > 1:
                _, evicted = self._discrete.popitem(last=False)
                self._cached_bytes -= _nbytes(evicted)
        if isinstance(cached, Exception):
            raise cached
        return cached

    def _band_on(
        self, history: Sequence[PoissonSubsampledGaussian], delta: float, level: Union[int, None]
    ) -> tuple[float, float, float]:
        """(lower, estimate, upper) on the grid of ``level``; the half-width certified for the history's steps."""
        grid = self._grid(history, delta, level)
        parts = [(self._discretised(m, grid), m.steps) for m in history]
        pmf, t_min, log_pmc_inf = compose(parts, grid)
        if level is None:
            eps_error = self.eps_error
        else:
            eps_error = certified_eps_error(grid.mesh, sum(m.steps for m in history), grid.delta_error)
        return epsilon_band(pmf, t_min, grid.mesh, log_pmc_inf, delta, grid.delta_error, eps_error)

    def _stages(
        self, history: Sequence[PoissonSubsampledGaussian], delta: float
    ) -> Iterator[tuple[int, tuple[float, float, float]]]:
        """Yield (level, band) of each stage: the mesh from RDP's eps, then, if finer, from the estimate."""
        steps = sum(m.steps for m in history)
        delta_error = delta * DELTA_ERROR_FRACTION
        first = mesh_level(self._target(self.rdp_epsilon(history, delta)), steps, delta_error)
        band = self._band_on(history, delta, first)
        yield first, band
        second = mesh_level(self._target(max(band[1], 0.0)), steps, delta_error)
        if second < first:
            yield second, self._band_on(history, delta, second)

    def _prv_levels(self, history: Sequence[PoissonSubsampledGaussian], delta: float) -> list[int]:
        """The mesh levels a query of ``history`` uses (it builds their grids)."""
        if self.relative_eps_error == 0.0:
            self._band_on(history, delta, None)
            return []
        return [level for level, _ in self._stages(history, delta)]

    def _prv_band(self, history: Sequence[PoissonSubsampledGaussian], delta: float) -> tuple[float, float, float]:
        if self.relative_eps_error == 0.0:
            return self._band_on(history, delta, None)
        *_, (_, band) = self._stages(history, delta)
        return band

    def _fallback(self, history: Sequence[PoissonSubsampledGaussian], delta: float, reason: str) -> EpsilonBound:
        """Sound replacement for a failed PRV computation: exact Gaussian at q=1, else PLD, else RDP."""
        if all(m.sample_rate == 1.0 for m in history):
            eps = gaussian_epsilon(composed_gaussian_mu(history), delta)
            method = METHOD_ANALYTIC_GAUSSIAN
        else:
            guess = self.rdp_epsilon(history, delta)
            try:
                eps = pld_epsilon(
                    history, delta, self.relative_eps_error, self.eps_error, guess=guess, accountant=self._pld
                ).epsilon
                if not math.isfinite(eps) or eps > guess:  # RDP is an upper bound too: take the smaller
                    raise ValueError(f"PLD eps {eps} is not below the RDP bound {guess}")
                method = METHOD_PLD
            except PLDFailure as exc:
                reason = f"{reason}; PLD: {type(exc).__name__}: {exc}"
                eps, method = guess, METHOD_RDP
        # Once per reason: a server re-asks every round and must not flood its log.
        log = logger.debug if reason in self._warned else logger.warning
        self._warned.add(reason)
        log("PRV accounting unavailable (%s); reporting %s bound eps=%.6g at delta=%g", reason, method, eps, delta)
        return EpsilonBound(lower=eps, estimate=eps, upper=eps, delta=delta, method=method)


def _nbytes(entry: Union[DiscretePRV, Exception]) -> int:
    return entry.spectrum.nbytes if isinstance(entry, DiscretePRV) else 0


def prv_epsilon(
    mechanisms: Sequence[Mechanism],
    delta: float,
    eps_error: float = DEFAULT_EPS_ERROR,
    *,
    relative_eps_error: float = DEFAULT_RELATIVE_EPS_ERROR,
    max_grid_points: int = DEFAULT_MAX_GRID_POINTS,
) -> EpsilonBound:
    """Epsilon at ``delta`` of the composition of ``mechanisms``, PRV-tight where possible.

    Mechanisms enter in canonical form (dominating Poisson-subsampled Gaussians,
    identical ones merged, sorted); zero total steps gives eps = 0 with
    ``method == "none"``. Otherwise the PRV composition described in the module
    docstring gives ``lower/estimate/upper`` with ``delta_error = delta / 1000``:
    ``upper = eps(delta - delta_error) + w`` and ``lower = eps(delta + delta_error) - w``,
    ``w <= max(relative_eps_error * eps, eps_error)`` the certified half-width.

    The PRV answer is cross-checked against an independent bound: the exact value at
    ``sample_rate == 1`` (must lie in [lower, upper]) or RDP otherwise (lower must not
    exceed it). On a prv_accountant failure (``RuntimeError`` "Discrete mean differs
    ...", ``MemoryError``), a grid above ``max_grid_points``, a delta too small for
    float64 on the grid, or a failed cross-check, the result is the sound fallback
    described in the module docstring, with ``lower == estimate == upper``.

    Args:
        mechanisms: what one party's data went through, in any order.
        delta: target delta, in (0, 1).
        eps_error: absolute floor of the band's half-width, in (0, 1] (the half-width
            itself when ``relative_eps_error == 0``).
        relative_eps_error: half-width relative to eps, in [0, 0.1].
        max_grid_points: cap on the PRV discretisation (memory/time guard).
    """
    composer = PRVComposer(eps_error, relative_eps_error=relative_eps_error, max_grid_points=max_grid_points)
    return composer.epsilon(mechanisms, delta)
