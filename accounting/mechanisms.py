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
``to_dict()`` / ``from_dict()`` for exact JSON round trips and an integer ``steps``
(how many times it ran). New mechanisms slot in by adding a frozen dataclass with
those members, and a ``name`` no mechanism has used before, and listing it in
``_REGISTRY``. Two accounting routes:

* the Gaussian mechanisms (:data:`GAUSSIAN_MECHANISMS`) have :meth:`accounted_as`:
  the Poisson-subsampled Gaussian whose privacy curve dominates one run, which is all
  the PRV accountant (:mod:`accounting.prv`) and its RDP check need
  (:func:`accounted_history`);
* :class:`DistributedSkellam` has no dominating Gaussian: its records are composed in
  Rényi DP by :mod:`accounting.skellam`, per client and per adversary
  (:mod:`accounting.budget`). :func:`accounted_history` refuses it.

Two levels of privacy (docs/architecture.md, "Privacy semantics"):

* :class:`PoissonSubsampledGaussian`: sample-level DP-SGD steps, one party per client;
* :class:`ClientLevelGaussian`: client-level DP-FedAvg rounds with continuous noise,
  whose guarantee covers every member of the population (kept so that the ledgers
  written with it replay to the bit);
* :class:`DistributedSkellam`: one secure sum of client updates carrying integer
  Skellam noise, with the clients whose masked input reached it; client-level
  guarantees are per client and named by adversary (:mod:`accounting.budget`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ClassVar, Iterable, Mapping, Union

__all__ = [
    "CLIENT_LEVEL_MECHANISMS",
    "GAUSSIAN_MECHANISMS",
    "SAMPLING_FIXED_SIZE",
    "SAMPLING_POISSON",
    "ClientLevelGaussian",
    "DistributedSkellam",
    "GaussianMechanism",
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


def _check_positive(owner: str, field: str, value: Any) -> float:
    """``value`` as a finite float > 0, or a ValueError naming ``owner.field``."""
    as_float = _check_real(owner, field, value)
    if not as_float > 0.0:
        raise ValueError(f"{owner}.{field} must be > 0, got {as_float!r}")
    return as_float


def _check_participants(owner: str, value: Any) -> tuple[int, ...]:
    """A non-empty, strictly increasing sequence of client ids >= 0, as a tuple of ints."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{owner}.participants must be a sorted list of client ids, got {value!r}")
    ids = tuple(value)
    for index, client in enumerate(ids):
        if isinstance(client, bool) or not isinstance(client, numbers.Integral) or int(client) < 0:
            raise ValueError(f"{owner}.participants[{index}] must be a client id (an integer >= 0), got {client!r}")
    ids = tuple(int(c) for c in ids)
    if not ids:
        raise ValueError(f"{owner}.participants must name at least one client, got []")
    for index in range(1, len(ids)):
        if ids[index] <= ids[index - 1]:
            raise ValueError(
                f"{owner}.participants must be strictly increasing (sorted, no repeats), got "
                f"{ids[index - 1]} then {ids[index]} at index {index}"
            )
    return ids


@dataclass(frozen=True)
class DistributedSkellam:
    """``steps`` secure sums of client updates, each carrying Skellam noise (distributed DP).

    Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
    Learning", NeurIPS 2021. Each cohort member clips its update, scales, rotates and
    rounds it to integers (L1/L2 norms of one member's rounded input at most
    ``l1_sensitivity`` / ``l2_sensitivity``, integer units) and adds its share of
    Skellam noise; shares of Sk(.) add up to Sk(.), so the sum the server decodes
    carries exactly Sk(``mu``) per coordinate, where Sk(mu) := Pois(mu) - Pois(mu)
    (variance 2 mu). ``mu`` is what was *realised*: s survivors of m planned members
    give s/m of the full cohort's mu. Neighbouring populations differ by one client's
    whole data (add or remove one client's update).

    ``participants`` are the clients whose masked input reached this sum: the server
    knows them, so against the server no cohort amplification holds (the guarantee of
    client c composes the sums that c is in); an observer of the released models does
    not, and with ``sampling == "poisson"`` (every client joins independently with
    probability ``cohort_size / population``) the sum is Poisson-subsampled for it. With
    ``"fixed_size"`` cohorts no amplification is claimed. See :mod:`accounting.budget`.

    Attributes:
        mu: realised Skellam parameter of the released sum (noise variance 2 mu per
            coordinate, integer units); finite, > 0.
        l1_sensitivity: Delta_1, L1 bound of one client's rounded input; > 0 and at most
            ``sqrt(dim) * l2_sensitivity``.
        l2_sensitivity: Delta_2, L2 bound of one client's rounded input; > 0.
        dim: coordinates of the summed vector (padded to the rotation's size); >= 1.
        cohort_size: planned cohort (expected one for poisson, exact for fixed_size); >= 1.
        population: clients the cohort is drawn from; >= cohort_size.
        sampling: ``"poisson"`` or ``"fixed_size"``.
        participants: sorted client ids (no repeats, at least one; at most
            ``population``, and at most ``cohort_size`` for fixed_size).
        steps: how many such sums (a run records 1 per sum); integer >= 0.
    """

    name: ClassVar[str] = "distributed_skellam"

    mu: float
    l1_sensitivity: float
    l2_sensitivity: float
    dim: int
    cohort_size: int
    population: int
    sampling: str
    participants: tuple[int, ...]
    steps: int

    def __post_init__(self) -> None:
        owner = type(self).__name__
        mu = _check_positive(owner, "mu", self.mu)
        l2 = _check_positive(owner, "l2_sensitivity", self.l2_sensitivity)
        l1 = _check_positive(owner, "l1_sensitivity", self.l1_sensitivity)
        dim = _check_count(owner, "dim", self.dim)
        if dim < 1:
            raise ValueError(f"{owner}.dim must be an integer >= 1, got {dim}")
        if l1 > math.sqrt(dim) * l2 * (1.0 + 1e-12):
            raise ValueError(
                f"{owner}.l1_sensitivity must be at most sqrt(dim) * l2_sensitivity = {math.sqrt(dim) * l2!r} "
                f"(dim={dim}, l2_sensitivity={l2!r}), got {l1!r}"
            )
        cohort = _check_count(owner, "cohort_size", self.cohort_size)
        if cohort < 1:
            raise ValueError(f"{owner}.cohort_size must be an integer >= 1, got {cohort}")
        population = _check_count(owner, "population", self.population)
        if population < cohort:
            raise ValueError(f"{owner}.population must be an integer >= cohort_size={cohort}, got {population}")
        if self.sampling not in (SAMPLING_POISSON, SAMPLING_FIXED_SIZE):
            raise ValueError(
                f"{owner}.sampling must be {SAMPLING_POISSON!r} or {SAMPLING_FIXED_SIZE!r}, got {self.sampling!r}"
            )
        participants = _check_participants(owner, self.participants)
        limit = cohort if self.sampling == SAMPLING_FIXED_SIZE else population
        if len(participants) > limit:
            what = "cohort_size" if self.sampling == SAMPLING_FIXED_SIZE else "population"
            raise ValueError(f"{owner}.participants must name at most {what}={limit} clients, got {len(participants)}")
        steps = _check_count(owner, "steps", self.steps)
        for field_name, value in (
            ("mu", mu), ("l1_sensitivity", l1), ("l2_sensitivity", l2), ("dim", dim), ("cohort_size", cohort),
            ("population", population), ("participants", participants), ("steps", steps),
        ):
            object.__setattr__(self, field_name, value)

    @property
    def sample_rate(self) -> float:
        """q = cohort_size / population (the Poisson rate, when ``sampling == "poisson"``)."""
        return self.cohort_size / self.population

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``participants`` as a list)."""
        return {
            "name": self.name,
            "mu": self.mu,
            "l1_sensitivity": self.l1_sensitivity,
            "l2_sensitivity": self.l2_sensitivity,
            "dim": self.dim,
            "cohort_size": self.cohort_size,
            "population": self.population,
            "sampling": self.sampling,
            "participants": list(self.participants),
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DistributedSkellam":
        """Inverse of :meth:`to_dict`; rejects a wrong ``name`` and missing/unknown fields."""
        fields = ("mu", "l1_sensitivity", "l2_sensitivity", "dim", "cohort_size", "population", "sampling",
                  "participants", "steps")
        _check_keys(cls.__name__, data, ("name",) + fields)
        if data["name"] != cls.name:
            raise ValueError(f"{cls.__name__}.name must be {cls.name!r}, got {data['name']!r}")
        if not isinstance(data["participants"], list):
            raise ValueError(f"{cls.__name__}.participants must be a JSON list, got {data['participants']!r}")
        return cls(**{f: data[f] for f in fields})


#: Mechanisms the PRV accountant composes through :meth:`accounted_as`.
GaussianMechanism = Union[PoissonSubsampledGaussian, ClientLevelGaussian]
GAUSSIAN_MECHANISMS: tuple[type, ...] = (PoissonSubsampledGaussian, ClientLevelGaussian)

#: Mechanisms whose ledger records belong to no single client (``client is None``).
CLIENT_LEVEL_MECHANISMS: tuple[type, ...] = (ClientLevelGaussian, DistributedSkellam)

#: Every mechanism type the ledger records and the accountants understand.
Mechanism = Union[PoissonSubsampledGaussian, ClientLevelGaussian, DistributedSkellam]

_REGISTRY: Mapping[str, type] = MappingProxyType(
    {cls.name: cls for cls in (PoissonSubsampledGaussian, ClientLevelGaussian, DistributedSkellam)}
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


def accounted_history(mechanisms: Iterable[GaussianMechanism]) -> tuple[PoissonSubsampledGaussian, ...]:
    """The canonical form the PRV accountant composes: dominating Poisson-subsampled
    Gaussians, identical ones merged, zero-step ones dropped, sorted by
    ``(noise_multiplier, sample_rate)``.

    Composition is commutative, so the order of a history carries no information; a
    fixed order makes every accountant's floating-point arithmetic, and so every
    figure, a function of the multiset of releases alone (the server's running figure
    and an auditor's recomputation agree to the last bit).

    Raises:
        TypeError: for a :class:`DistributedSkellam` (no dominating Gaussian: compose it
            with :mod:`accounting.skellam`, as :class:`accounting.budget.BudgetTracker`
            does) or anything that is not a mechanism.
    """
    dominating = []
    for index, mechanism in enumerate(mechanisms):
        _check_mechanism(index, mechanism)
        if not isinstance(mechanism, GAUSSIAN_MECHANISMS):
            raise TypeError(
                f"mechanisms[{index}] is a {type(mechanism).__name__}, which has no dominating Poisson-subsampled "
                "Gaussian: compose it in RDP with accounting.skellam (accounting.budget does)"
            )
        dominating.append(mechanism.accounted_as())
    merged = merge_mechanisms(dominating)
    return tuple(sorted(merged, key=lambda m: (m.noise_multiplier, m.sample_rate)))
