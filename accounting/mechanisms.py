"""Privacy mechanisms as small, immutable value objects.

Stability contract (in the spirit of dp_accounting's ``dp_event.py``): mechanisms are
persisted in ledgers (:mod:`accounting.ledger`) by their ``name`` and fields, and every
reported figure is replayed from those. So a persisted mechanism's name, fields and
meaning never change once released. A changed meaning or a new field gets a new
mechanism class with a new name, and the old one stays as it is, so old ledgers keep
replaying exactly, to the last bit. Readers refuse names they do not know, and
missing or extra fields, rather than guess (:func:`mechanism_from_dict`, each
``from_dict``). This is separate from the ledger's ``format_version``, which covers
the layout of a ledger line and is never bumped for a mechanism.

A mechanism says *what was released* (which noise, which sampling, how many times);
it knows nothing about composition. Accountants (:mod:`accounting.prv`,
:mod:`accounting.rdp`) turn sequences of mechanisms into privacy figures, in the
spirit of ``prv_accountant.privacy_random_variables``.

Every mechanism class has a class-level ``name`` (its tag in the ledger),
``to_dict()`` / ``from_dict()`` for exact JSON round trips, an integer ``steps``
(how many times it ran) and :meth:`accounted_as`: the Poisson-subsampled Gaussian
whose privacy curve dominates one run of it, which is all the accountants need.
New mechanisms slot in by adding a frozen dataclass with those members, and a
``name`` no mechanism has used before, and listing it in ``_REGISTRY``.

Two levels of privacy (docs/architecture.md, "Privacy semantics"):

* :class:`PoissonSubsampledGaussian`: sample-level DP-SGD steps, one party per client;
* :class:`ClientLevelGaussian`: client-level DP-FedAvg rounds, whose guarantee covers
  every member of the population.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ClassVar, Iterable, Mapping, Union

__all__ = [
    "SAMPLING_FIXED_SIZE",
    "SAMPLING_POISSON",
    "ClientLevelGaussian",
    "Mechanism",
    "PoissonSubsampledGaussian",
    "accounted_history",
    "mechanism_from_dict",
    "merge_mechanisms",
]

SAMPLING_POISSON = "poisson"
SAMPLING_FIXED_SIZE = "fixed_size"


def _check_real(owner: str, field: str, value: Any) -> float:
    """Return ``value`` as a finite float or raise a ValueError naming ``owner.field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}.{field} must be a real number, got {value!r} ({type(value).__name__})")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ValueError(f"{owner}.{field} must be finite, got {value!r}")
    return as_float


def _check_count(owner: str, field: str, value: Any) -> int:
    """Return ``value`` as a non-negative int or raise a ValueError naming ``owner.field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner}.{field} must be an integer >= 0, got {value!r} ({type(value).__name__})")
    as_int = int(value)
    if as_int < 0:
        raise ValueError(f"{owner}.{field} must be an integer >= 0, got {as_int}")
    return as_int


def _check_keys(owner: str, data: Mapping[str, Any], expected: Iterable[str]) -> None:
    """Reject dictionaries with missing or unknown keys, naming them."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{owner}: expected a JSON object, got {type(data).__name__}")
    expected_set = set(expected)
    missing = sorted(expected_set - set(data))
    unknown = sorted(set(data) - expected_set)
    if missing:
        raise ValueError(f"{owner}: missing field(s) {missing}")
    if unknown:
        raise ValueError(f"{owner}: unknown field(s) {unknown}; allowed: {sorted(expected_set)}")


@dataclass(frozen=True)
class PoissonSubsampledGaussian:
    """``steps`` runs of the Poisson-subsampled Gaussian mechanism (one DP-SGD step each).

    Each record is included independently with probability ``sample_rate`` (Poisson
    sampling); the sum of clipped contributions (L2 sensitivity 1 after scaling) gets
    Gaussian noise of standard deviation ``noise_multiplier``. Neighbouring datasets
    differ by adding or removing one record (Abadi et al. 2016; Mironov, Talwar,
    Zhang 2019). ``sample_rate == 1`` is the plain Gaussian mechanism.

    Attributes:
        noise_multiplier: sigma, noise std / L2 sensitivity; finite, > 0.
        sample_rate: q, Poisson inclusion probability; 0 < q <= 1.
        steps: number of times the mechanism ran; integer >= 0.
    """

    name: ClassVar[str] = "poisson_subsampled_gaussian"

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        owner = type(self).__name__
        sigma = _check_real(owner, "noise_multiplier", self.noise_multiplier)
        if not sigma > 0.0:
            raise ValueError(f"{owner}.noise_multiplier must be > 0, got {sigma!r}")
        q = _check_real(owner, "sample_rate", self.sample_rate)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"{owner}.sample_rate must be in (0, 1], got {q!r}")
        steps = _check_count(owner, "steps", self.steps)
        # Normalise numpy scalars to builtins so equality, hashing and JSON are exact.
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", q)
        object.__setattr__(self, "steps", steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"name": ..., "noise_multiplier", "sample_rate", "steps"}``."""
        return {
            "name": self.name,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PoissonSubsampledGaussian":
        """Inverse of :meth:`to_dict`; rejects a wrong ``name`` and missing/unknown fields."""
        _check_keys(cls.__name__, data, ("name", "noise_multiplier", "sample_rate", "steps"))
        if data["name"] != cls.name:
            raise ValueError(f"{cls.__name__}.name must be {cls.name!r}, got {data['name']!r}")
        return cls(
            noise_multiplier=data["noise_multiplier"],
            sample_rate=data["sample_rate"],
            steps=data["steps"],
        )

    def accounted_as(self) -> "PoissonSubsampledGaussian":
        """Itself: the accountants' native mechanism."""
        return self


@dataclass(frozen=True)
class ClientLevelGaussian:
    """``steps`` rounds of client-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018).

    Each round a cohort is drawn from ``population`` clients; every whole client update
    is clipped to L2 norm S and the secure sum carries Gaussian noise of standard
    deviation ``noise_multiplier * S`` (with distributed noise: the shares the
    *surviving* clients actually added, so dropouts lower it; record what happened,
    not what was planned). Neighbouring populations differ by one client's whole data.

    ``sampling`` says how the cohort was drawn and so which guarantee holds:

    * ``"poisson"``: every client joins independently with probability
      ``q = cohort_size / population`` (``cohort_size`` is the *expected* cohort).
      Accounted as the Poisson-subsampled Gaussian with that q (McMahan et al. 2018,
      Sec. 3; the PRV of Gopi et al. 2021).
    * ``"fixed_size"``: exactly ``cohort_size`` clients drawn without replacement.
      The Poisson analysis does not apply, and no amplification is claimed: couple the
      cohorts of two neighbouring populations so that they differ in at most one
      member (Balle, Barthe, Gaboardi 2018, Sec. 5); the noisy sums then differ by a
      vector of norm <= 2S, so by joint convexity of the hockey-stick divergence the
      round is dominated by the Gaussian mechanism with sensitivity 2S, i.e. multiplier
      ``noise_multiplier / 2`` at q = 1. Sound, and loose.

    Attributes:
        noise_multiplier: realised noise std / clipping norm S of the summed update; > 0.
        cohort_size: expected (poisson) or exact (fixed_size) cohort; integer >= 1.
        population: number of clients the cohort is drawn from; >= cohort_size.
        steps: number of rounds; integer >= 0.
        sampling: ``"poisson"`` or ``"fixed_size"``.
    """

    name: ClassVar[str] = "client_level_gaussian"

    noise_multiplier: float
    cohort_size: int
    population: int
    steps: int
    sampling: str = SAMPLING_POISSON

    def __post_init__(self) -> None:
        owner = type(self).__name__
        sigma = _check_real(owner, "noise_multiplier", self.noise_multiplier)
        if not sigma > 0.0:
            raise ValueError(f"{owner}.noise_multiplier must be > 0, got {sigma!r}")
        cohort = _check_count(owner, "cohort_size", self.cohort_size)
        if cohort < 1:
            raise ValueError(f"{owner}.cohort_size must be an integer >= 1, got {cohort}")
        population = _check_count(owner, "population", self.population)
        if population < cohort:
            raise ValueError(f"{owner}.population must be an integer >= cohort_size={cohort}, got {population}")
        steps = _check_count(owner, "steps", self.steps)
        if self.sampling not in (SAMPLING_POISSON, SAMPLING_FIXED_SIZE):
            raise ValueError(
                f"{owner}.sampling must be {SAMPLING_POISSON!r} or {SAMPLING_FIXED_SIZE!r}, got {self.sampling!r}"
            )
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "cohort_size", cohort)
        object.__setattr__(self, "population", population)
        object.__setattr__(self, "steps", steps)

    @property
    def sample_rate(self) -> float:
        """q = cohort_size / population."""
        return self.cohort_size / self.population

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"name", "noise_multiplier", "cohort_size", "population", "steps", "sampling"}``."""
        return {
            "name": self.name,
            "noise_multiplier": self.noise_multiplier,
            "cohort_size": self.cohort_size,
            "population": self.population,
            "steps": self.steps,
            "sampling": self.sampling,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClientLevelGaussian":
        """Inverse of :meth:`to_dict`; rejects a wrong ``name`` and missing/unknown fields."""
        _check_keys(cls.__name__, data, ("name", "noise_multiplier", "cohort_size", "population", "steps", "sampling"))
        if data["name"] != cls.name:
            raise ValueError(f"{cls.__name__}.name must be {cls.name!r}, got {data['name']!r}")
        return cls(
            noise_multiplier=data["noise_multiplier"],
            cohort_size=data["cohort_size"],
            population=data["population"],
            steps=data["steps"],
            sampling=data["sampling"],
        )

    def accounted_as(self) -> PoissonSubsampledGaussian:
        """The dominating Poisson-subsampled Gaussian (see the class docstring)."""
        if self.sampling == SAMPLING_POISSON:
            return PoissonSubsampledGaussian(self.noise_multiplier, self.sample_rate, self.steps)
        return PoissonSubsampledGaussian(self.noise_multiplier / 2.0, 1.0, self.steps)


#: Every mechanism type the ledger records and the accountants understand.
Mechanism = Union[PoissonSubsampledGaussian, ClientLevelGaussian]

_REGISTRY: Mapping[str, type] = MappingProxyType(
    {cls.name: cls for cls in (PoissonSubsampledGaussian, ClientLevelGaussian)}
)


def mechanism_from_dict(data: Mapping[str, Any]) -> Mechanism:
    """Build the mechanism named by ``data["name"]`` (the ledger's ``"mechanism"`` object)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"mechanism: expected a JSON object, got {type(data).__name__}")
    name = data.get("name")
    try:
        cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"mechanism.name must be one of {sorted(_REGISTRY)}, got {name!r}") from None
    return cls.from_dict(data)


def _check_mechanism(index: int, mechanism: Any) -> None:
    if type(mechanism) not in _REGISTRY.values():
        raise TypeError(
            f"mechanisms[{index}] must be one of {sorted(c.__name__ for c in _REGISTRY.values())}, "
            f"got {type(mechanism).__name__}"
        )


def merge_mechanisms(mechanisms: Iterable[Mechanism]) -> tuple[Mechanism, ...]:
    """Merge mechanisms that differ only in ``steps`` by summing their steps.

    Composition is commutative, so ``k`` runs of M followed by ``m`` runs of M equal
    ``k + m`` runs of M. Order of first appearance is kept; zero-step entries are
    dropped (they released nothing).
    """
    totals: dict[Mechanism, int] = {}
    for index, mechanism in enumerate(mechanisms):
        _check_mechanism(index, mechanism)
        key = replace(mechanism, steps=0)
        totals[key] = totals.get(key, 0) + mechanism.steps
    return tuple(replace(key, steps=steps) for key, steps in totals.items() if steps > 0)


def accounted_history(mechanisms: Iterable[Mechanism]) -> tuple[PoissonSubsampledGaussian, ...]:
    """The canonical form the accountants compose: dominating Poisson-subsampled
    Gaussians, identical ones merged, zero-step ones dropped, sorted by
    ``(noise_multiplier, sample_rate)``.

    Composition is commutative, so the order of a history carries no information; a
    fixed order makes every accountant's floating-point arithmetic, and so every
    figure, a function of the multiset of releases alone (the server's running figure
    and an auditor's recomputation agree to the last bit).
    """
    dominating = []
    for index, mechanism in enumerate(mechanisms):
        _check_mechanism(index, mechanism)
        dominating.append(mechanism.accounted_as())
    merged = merge_mechanisms(dominating)
    return tuple(sorted(merged, key=lambda m: (m.noise_multiplier, m.sample_rate)))
