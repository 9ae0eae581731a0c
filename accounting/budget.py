"""Per-party privacy budgets, recomputed from ledger records alone.

Kinds of party (docs/architecture.md, "Privacy semantics"):

* **sample level**, one per client: the client's guarantee about its own records,
  composed from exactly the :class:`~accounting.mechanisms.PoissonSubsampledGaussian`
  records of that client (one accountant per client, fed only the steps it ran);
  PRV upper bound (the guarantee) with its estimate and lower bound, RDP beside it;
* **client level, continuous Gaussian** (old ledgers), the population: the guarantee
  about any one client's whole contribution, composed from every
  :class:`~accounting.mechanisms.ClientLevelGaussian` record (``client is None``);
* **client level, distributed Skellam**, per client and per adversary, from the
  :class:`~accounting.mechanisms.DistributedSkellam` records (one per secure sum,
  ``client is None``, with the ``participants`` whose input reached it), in Rényi DP
  (:mod:`accounting.skellam`):

  - ``against="server"``: the server draws the cohort and sees who took part, so no
    cohort amplification holds against it: client c's figure composes the unsampled
    Skellam RDP of exactly the sums whose participants contain c (a client in no sum
    has spent nothing, and has no entry);
  - ``against="observers"`` (who see only the released global models): with Poisson
    cohorts every released sum is, for them, Poisson-subsampled at
    q = cohort_size / population (Zhu & Wang 2019), whether or not c was in it;
    fixed-size cohorts claim no amplification, so those sums count as against the
    server (the sums c is in). The released models are post-processing of the
    server's view, so the figure reported is min(that, the server figure): with only
    fixed-size cohorts it *is* the server figure.

:class:`BudgetTracker` is what a server keeps for a run: it takes each round's
records and re-queries cached grids; :func:`budget_snapshot` and
:func:`budget_history` replay a ledger the same way. Every figure is computed from the
canonical (sorted, merged) multiset of the records it covers, so an auditor's figures
equal the run's to the last bit.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .ledger import LedgerRecord
from .mechanisms import SAMPLING_POISSON, DistributedSkellam, Mechanism, accounted_history
from .prv import DEFAULT_EPS_ERROR, EpsilonBound, PRVComposer
from .rdp import check_delta
from .skellam import compose_curves, poisson_subsampled_rdp, skellam_epsilon, skellam_rdp_curve

__all__ = [
    "AGAINST",
    "AGAINST_OBSERVERS",
    "AGAINST_SERVER",
    "LEVEL_CLIENT",
    "LEVEL_SAMPLE",
    "METHOD_SKELLAM_RDP",
    "BudgetSnapshot",
    "BudgetTracker",
    "ClientLevelBudget",
    "PartyBudget",
    "budget_history",
    "budget_snapshot",
    "client_epsilons",
    "client_mechanisms",
]

LEVEL_SAMPLE = "sample"
LEVEL_CLIENT = "client"

#: The adversaries a client-level (distributed Skellam) figure is named by.
AGAINST_SERVER = "server"
AGAINST_OBSERVERS = "observers"
AGAINST = (AGAINST_SERVER, AGAINST_OBSERVERS)

#: How a client-level Skellam figure is computed: RDP (accounting.skellam), converted.
METHOD_SKELLAM_RDP = "skellam_rdp"

#: Quantiles of the clients' epsilon reported beside the worst client.
DEFAULT_QUANTILES = (0.0, 0.5, 0.9, 1.0)


def _check_upto_round(upto_round: Optional[int]) -> Optional[int]:
    if upto_round is None:
        return None
    if isinstance(upto_round, bool) or not isinstance(upto_round, numbers.Integral) or upto_round < 0:
        raise ValueError(f"upto_round must be None or an integer >= 0, got {upto_round!r}")
    return int(upto_round)


def _check_records(records: Iterable[LedgerRecord]) -> list[LedgerRecord]:
    checked = list(records)
    for index, record in enumerate(checked):
        if not isinstance(record, LedgerRecord):
            raise TypeError(f"records[{index}] must be a LedgerRecord, got {type(record).__name__}")
    return checked


@dataclass(frozen=True)
class PartyBudget:
    """What one party has spent: PRV band (the guarantee is ``prv.upper``) and RDP beside it.

    ``client`` is the client id for a sample-level budget, ``None`` for the
    population's client-level budget.
    """

    client: Optional[int]
    rounds: int
    steps: int
    prv: EpsilonBound
    rdp: float

    @property
    def level(self) -> str:
        return LEVEL_CLIENT if self.client is None else LEVEL_SAMPLE

    @property
    def rdp_over_prv(self) -> float:
        """How much looser RDP is than the PRV guarantee (1.0 when both are 0)."""
        if self.prv.upper > 0.0:
            return self.rdp / self.prv.upper
        return 1.0 if self.rdp == 0.0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON/CSV row."""
        return {
            "client": self.client,
            "level": self.level,
            "rounds": self.rounds,
            "steps": self.steps,
            "delta": self.prv.delta,
            "epsilon_lower": self.prv.lower,
            "epsilon_estimate": self.prv.estimate,
            "epsilon_upper": self.prv.upper,
            "accountant": self.prv.method,
            "epsilon_rdp": self.rdp,
            "rdp_over_prv": self.rdp_over_prv,
        }


def check_against(against: str) -> str:
    """``against`` if it names an adversary (:data:`AGAINST`), else a ValueError naming it."""
    if against not in AGAINST:
        raise ValueError(f"against must be one of {list(AGAINST)}, got {against!r}")
    return against


@dataclass(frozen=True)
class ClientLevelBudget:
    """Client ``client``'s client-level epsilon at ``delta`` against one adversary.

    ``against`` is ``"server"`` or ``"observers"`` (see the module docstring).
    ``sums`` and ``rounds`` count the secure sums (and the rounds they fell in) that
    the figure composes; ``amplified`` says whether cohort amplification lowered it
    (only ever for observers with Poisson cohorts: when the server figure is the
    smaller, that is the one reported and ``amplified`` is False). ``order`` is the
    RDP order of the conversion (nan when nothing was spent).
    """

    client: int
    against: str
    rounds: int
    sums: int
    epsilon: float
    order: float
    delta: float
    amplified: bool

    @property
    def method(self) -> str:
        return METHOD_SKELLAM_RDP

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON row (``order`` None when nothing was spent)."""
        return {
            "client": self.client,
            "against": self.against,
            "rounds": self.rounds,
            "sums": self.sums,
            "delta": self.delta,
            "epsilon": self.epsilon,
            "accountant": self.method,
            "rdp_order": None if math.isnan(self.order) else self.order,
            "amplified": self.amplified,
        }


@dataclass(frozen=True)
class BudgetSnapshot:
    """Every party's budget after ``round`` (``None``: no record yet) at ``delta``.

    ``clients``: sample-level budgets; ``population``: the client-level budget of old
    :class:`~accounting.mechanisms.ClientLevelGaussian` ledgers; ``client_level``:
    per adversary (``"server"``, ``"observers"``), each client's client-level budget
    from :class:`~accounting.mechanisms.DistributedSkellam` records (clients in no
    secure sum are absent: they spent nothing).
    """

    round: Optional[int]
    delta: float
    clients: Mapping[int, PartyBudget] = field(default_factory=dict)
    population: Optional[PartyBudget] = None
    client_level: Mapping[str, Mapping[int, ClientLevelBudget]] = field(
        default_factory=lambda: {AGAINST_SERVER: {}, AGAINST_OBSERVERS: {}}
    )

    def parties(self) -> list[PartyBudget]:
        """Sample-level budgets in client order, then the client-level one if any."""
        ordered = [self.clients[c] for c in sorted(self.clients)]
        return ordered + ([self.population] if self.population is not None else [])

    def worst(self) -> Optional[PartyBudget]:
        """The sample-level client with the largest PRV upper bound (lowest id on ties)."""
        if not self.clients:
            return None
        return max(self.clients.values(), key=lambda b: (b.prv.upper, -b.client))

    def quantiles(self, levels: Sequence[float] = DEFAULT_QUANTILES) -> dict[float, float]:
        """Quantiles (linear interpolation) of the clients' PRV upper bounds; empty without clients."""
        if not self.clients:
            return {}
        uppers = np.array([b.prv.upper for b in self.clients.values()])
        return {float(q): float(np.quantile(uppers, q)) for q in levels}

    def client_level_budgets(self, against: str) -> Mapping[int, ClientLevelBudget]:
        """Each client's distributed-Skellam client-level budget against ``against`` (by client id)."""
        return self.client_level.get(check_against(against), {})

    def worst_client_level(self, against: str) -> Optional[ClientLevelBudget]:
        """The client with the largest client-level epsilon against ``against`` (lowest id on ties)."""
        budgets = self.client_level_budgets(against)
        if not budgets:
            return None
        return max(budgets.values(), key=lambda b: (b.epsilon, -b.client))


_SkellamKey = tuple  # (mu, l1_sensitivity, l2_sensitivity, sampling, cohort_size, population)


def _skellam_key(mechanism: DistributedSkellam) -> _SkellamKey:
    """What a sum's RDP depends on (participants and dim do not enter the bound)."""
    m = mechanism
    return (m.mu, m.l1_sensitivity, m.l2_sensitivity, m.sampling, m.cohort_size, m.population)


class _SkellamAccount:
    """The distributed-Skellam part of a :class:`BudgetTracker`: per client, per adversary.

    Keeps the multiset of sums (merged by :func:`_skellam_key`) over all and per
    client; a figure is always recomputed from the sorted multiset it covers, so it
    does not depend on the order records arrived in.
    """

    def __init__(self) -> None:
        self._poisson: dict[_SkellamKey, int] = {}
        self._poisson_rounds: set[int] = set()
        self._per_client: dict[int, dict[_SkellamKey, int]] = {}
        self._client_rounds: dict[int, set[int]] = {}
        self._unsampled: dict[_SkellamKey, np.ndarray] = {}
        self._amplified: dict[_SkellamKey, np.ndarray] = {}
        self.budgets: dict[str, dict[int, ClientLevelBudget]] = {AGAINST_SERVER: {}, AGAINST_OBSERVERS: {}}

    def add(self, round_: int, mechanism: DistributedSkellam) -> set[int]:
        """Account one record; returns the clients it touches."""
        key = _skellam_key(mechanism)
        if mechanism.steps == 0:
            return set()
        if mechanism.sampling == SAMPLING_POISSON:
            self._poisson[key] = self._poisson.get(key, 0) + mechanism.steps
            self._poisson_rounds.add(round_)
        for client in mechanism.participants:
            counts = self._per_client.setdefault(client, {})
            counts[key] = counts.get(key, 0) + mechanism.steps
            self._client_rounds.setdefault(client, set()).add(round_)
        return set(mechanism.participants)

    def _unsampled_curve(self, key: _SkellamKey) -> np.ndarray:
        if key not in self._unsampled:
            self._unsampled[key] = skellam_rdp_curve(key[0], key[1], key[2])
        return self._unsampled[key]

    def _amplified_curve(self, key: _SkellamKey) -> np.ndarray:
        if key not in self._amplified:
            self._amplified[key] = poisson_subsampled_rdp(self._unsampled_curve(key), key[4] / key[5])
        return self._amplified[key]

    def refresh(self, touched: set[int], poisson_added: bool, delta: float) -> None:
        """Recompute the figures the last records changed (every observers figure when a
        Poisson sum was added: the amplified part covers every client)."""
        computed: dict[tuple, tuple[float, float]] = {}

        def epsilon(signature: tuple, parts: list) -> tuple[float, float]:
            if signature not in computed:
                computed[signature] = skellam_epsilon(compose_curves(parts), delta)
            return computed[signature]

        poisson = tuple(sorted(self._poisson.items()))
        poisson_parts = [(self._amplified_curve(k), n) for k, n in poisson]
        poisson_sums = sum(n for _, n in poisson)
        for client in sorted(touched):
            own = tuple(sorted(self._per_client[client].items()))
            eps, order = epsilon(("server", own), [(self._unsampled_curve(k), n) for k, n in own])
            self.budgets[AGAINST_SERVER][client] = ClientLevelBudget(
                client=client, against=AGAINST_SERVER, rounds=len(self._client_rounds[client]),
                sums=sum(n for _, n in own), epsilon=eps, order=order, delta=delta, amplified=False,
            )
        for client in sorted(self._per_client) if poisson_added else sorted(touched):
            server = self.budgets[AGAINST_SERVER][client]
            fixed = tuple((k, n) for k, n in sorted(self._per_client[client].items()) if k[3] != SAMPLING_POISSON)
            if not poisson:  # fixed-size cohorts only: no amplification claimed
                self.budgets[AGAINST_OBSERVERS][client] = replace(server, against=AGAINST_OBSERVERS)
                continue
            eps, order = epsilon(
                ("observers", poisson, fixed), poisson_parts + [(self._unsampled_curve(k), n) for k, n in fixed]
            )
            if eps < server.epsilon:
                # every Poisson sum, and the fixed-size sums c is in (which fall in c's rounds)
                rounds = len(self._poisson_rounds | self._client_rounds[client]) if fixed else len(self._poisson_rounds)
                self.budgets[AGAINST_OBSERVERS][client] = ClientLevelBudget(
                    client=client, against=AGAINST_OBSERVERS, rounds=rounds,
                    sums=poisson_sums + sum(n for _, n in fixed), epsilon=eps, order=order, delta=delta, amplified=True,
                )
            else:
                self.budgets[AGAINST_OBSERVERS][client] = replace(server, against=AGAINST_OBSERVERS)

    def snapshot(self) -> dict[str, dict[int, ClientLevelBudget]]:
        return {against: {c: budgets[c] for c in sorted(budgets)} for against, budgets in self.budgets.items()}


class BudgetTracker:
    """Running per-party budgets of one run: feed each round's records, read the budgets.

    Re-querying after each round costs one FFT per distinct history on grids the
    composer caches (build them ahead with :meth:`prepare`); parties with identical
    histories share one computation. Figures equal :func:`budget_snapshot` of the same
    records to the last bit.

    Args:
        delta: the delta at which every epsilon is reported, in (0, 1).
        eps_error: absolute floor of the PRV band's half-width, in (0, 1] (the band is max(0.4% of ε, eps_error)).
        composer: a :class:`~accounting.prv.PRVComposer` to share (default: a new one).
    """

    def __init__(self, delta: float, eps_error: float = DEFAULT_EPS_ERROR, *, composer: Optional[PRVComposer] = None) -> None:
        self.delta = check_delta(delta)
        self._composer = composer if composer is not None else PRVComposer(eps_error)
        self._histories: dict[Optional[int], list[Mechanism]] = {}
        self._rounds: dict[Optional[int], set[int]] = {}
        self._budgets: dict[Optional[int], PartyBudget] = {}
        self._skellam = _SkellamAccount()
        self._last_round: Optional[int] = None

    @property
    def composer(self) -> PRVComposer:
        return self._composer

    def prepare(self, mechanisms: Sequence[Mechanism]) -> None:
        """Build ahead the grids a party whose history grows into ``mechanisms`` will use.

        Optional: makes every later query a re-query (e.g. call it once before training
        with each client's planned history, ``PoissonSubsampledGaussian(sigma, q,
        rounds * local_steps)``). Figures do not change.
        """
        self._composer.prepare(mechanisms, self.delta)

    def add(self, records: Iterable[LedgerRecord]) -> BudgetSnapshot:
        """Account ``records`` (typically one round's) and return every party's budget after them."""
        records = _check_records(records)
        touched: set[Optional[int]] = set()
        skellam_touched: set[int] = set()
        poisson_added = False
        for index, record in enumerate(records):
            if self._last_round is not None and record.round < self._last_round:
                raise ValueError(f"records[{index}].round={record.round} precedes round {self._last_round} already added")
            self._last_round = record.round
            if isinstance(record.mechanism, DistributedSkellam):  # RDP route, per client and adversary
                skellam_touched |= self._skellam.add(record.round, record.mechanism)
                poisson_added |= record.mechanism.sampling == SAMPLING_POISSON and record.mechanism.steps > 0
                continue
            self._histories.setdefault(record.client, []).append(record.mechanism)
            self._rounds.setdefault(record.client, set()).add(record.round)
            touched.add(record.client)
        computed: dict[tuple, tuple[EpsilonBound, float]] = {}
        for party in touched:
            history = self._histories[party]
            key = accounted_history(history)
            if key not in computed:
                computed[key] = (self._composer.epsilon(key, self.delta), self._composer.rdp_epsilon(key, self.delta))
            prv, rdp = computed[key]
            self._budgets[party] = PartyBudget(
                client=party,
                rounds=len(self._rounds[party]),
                steps=sum(m.steps for m in history),
                prv=prv,
                rdp=rdp,
            )
        if skellam_touched or poisson_added:
            self._skellam.refresh(skellam_touched, poisson_added, self.delta)
        return self.snapshot()

    def snapshot(self) -> BudgetSnapshot:
        """Every party's budget after the records added so far."""
        return BudgetSnapshot(
            round=self._last_round,
            delta=self.delta,
            clients={c: self._budgets[c] for c in sorted(k for k in self._budgets if k is not None)},
            population=self._budgets.get(None),
            client_level=self._skellam.snapshot(),
        )


def _by_round(records: Sequence[LedgerRecord]) -> list[list[LedgerRecord]]:
    """Records grouped into consecutive runs of equal round (ledger order)."""
    groups: list[list[LedgerRecord]] = []
    for record in records:
        if groups and groups[-1][0].round == record.round:
            groups[-1].append(record)
        else:
            groups.append([record])
    return groups


def budget_history(
    records: Iterable[LedgerRecord],
    delta: float,
    eps_error: float = DEFAULT_EPS_ERROR,
    *,
    composer: Optional[PRVComposer] = None,
) -> list[BudgetSnapshot]:
    """Every party's budget after each round of the ledger, in round order (a replay of the run)."""
    tracker = BudgetTracker(delta, eps_error, composer=composer)
    return [tracker.add(group) for group in _by_round(_check_records(records))]


def budget_snapshot(
    records: Iterable[LedgerRecord],
    delta: float,
    upto_round: Optional[int] = None,
    eps_error: float = DEFAULT_EPS_ERROR,
    *,
    composer: Optional[PRVComposer] = None,
) -> BudgetSnapshot:
    """Every party's budget from the records with ``round <= upto_round`` (``None``: all)."""
    limit = _check_upto_round(upto_round)
    tracker = BudgetTracker(delta, eps_error, composer=composer)
    selected = [r for r in _check_records(records) if limit is None or r.round <= limit]
    return tracker.add(selected)


def client_mechanisms(
    records: Iterable[LedgerRecord], upto_round: Optional[int] = None
) -> dict[int, list[Mechanism]]:
    """Sample-level mechanisms per client, in ledger order, from records with ``round <= upto_round``.

    ``upto_round=None`` takes every record. Clients with no such record are absent;
    client-level records (``client is None``) are not a client's. Keys ascend.
    """
    limit = _check_upto_round(upto_round)
    per_client: dict[int, list[Mechanism]] = {}
    for record in _check_records(records):
        if record.client is None or (limit is not None and record.round > limit):
            continue
        per_client.setdefault(record.client, []).append(record.mechanism)
    return {client: per_client[client] for client in sorted(per_client)}


def client_epsilons(
    records: Iterable[LedgerRecord],
    delta: float,
    upto_round: Optional[int] = None,
    eps_error: float = DEFAULT_EPS_ERROR,
) -> dict[int, EpsilonBound]:
    """PRV epsilon of each client's sample-level records (rounds ``<= upto_round``) at ``delta``."""
    snapshot = budget_snapshot(records, delta, upto_round, eps_error)
    return {client: budget.prv for client, budget in snapshot.clients.items()}
