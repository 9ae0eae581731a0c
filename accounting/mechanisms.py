"""Privacy mechanisms as small, immutable value objects.

A mechanism says *what was released* (which noise, which sampling, how many times);
it knows nothing about composition. Accountants (:mod:`accounting.prv`,
:mod:`accounting.rdp`) turn sequences of mechanisms into privacy figures, in the
spirit of ``prv_accountant.privacy_random_variables``.

Every mechanism class has a class-level ``name`` (its tag in the ledger),
``to_dict()`` / ``from_dict()`` for exact JSON round trips, and an integer ``steps``
(how many times it ran). New mechanisms slot in by adding a frozen dataclass with
those members and listing it in ``_REGISTRY``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ClassVar, Iterable, Mapping

__all__ = [
    "Mechanism",
    "PoissonSubsampledGaussian",
    "mechanism_from_dict",
    "merge_mechanisms",
]


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


#: Every mechanism type the accountants understand. A later issue widens this to a
#: Union as mechanisms are added.
Mechanism = PoissonSubsampledGaussian

_REGISTRY: Mapping[str, type[PoissonSubsampledGaussian]] = MappingProxyType(
    {PoissonSubsampledGaussian.name: PoissonSubsampledGaussian}
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


def merge_mechanisms(mechanisms: Iterable[Mechanism]) -> tuple[Mechanism, ...]:
    """Merge mechanisms that differ only in ``steps`` by summing their steps.

    Composition is commutative, so ``k`` runs of M followed by ``m`` runs of M equal
    ``k + m`` runs of M. Order of first appearance is kept; zero-step entries are
    dropped (they released nothing).
    """
    totals: dict[Mechanism, int] = {}
    for index, mechanism in enumerate(mechanisms):
        if type(mechanism) not in _REGISTRY.values():
            raise TypeError(
                f"mechanisms[{index}] must be one of {sorted(c.__name__ for c in _REGISTRY.values())}, "
                f"got {type(mechanism).__name__}"
            )
        key = replace(mechanism, steps=0)
        totals[key] = totals.get(key, 0) + mechanism.steps
    return tuple(replace(key, steps=steps) for key, steps in totals.items() if steps > 0)
