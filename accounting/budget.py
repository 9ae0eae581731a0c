"""Per-party privacy budgets, recomputed from ledger records alone.

Two kinds of party (docs/architecture.md, "Privacy semantics"):

* **sample level**, one per client: the client's guarantee about its own records,
  composed from exactly the :class:`~accounting.mechanisms.PoissonSubsampledGaussian`
  records of that client (one accountant per client, fed only the steps it ran);
* **client level**, the population: the guarantee about any one client's whole
  contribution, composed from every
  :class:`~accounting.mechanisms.ClientLevelGaussian` record (``client is None``).

Each figure is the PRV upper bound (the guarantee) with its estimate and lower bound,
and the RDP bound beside it. :class:`BudgetTracker` is what a server keeps for a run:
it takes each round's records and re-queries cached grids; :func:`budget_snapshot`
and :func:`budget_history` replay a ledger the same way, so an auditor's figures equal
the run's to the last bit.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from .ledger import LedgerRecord
from .mechanisms import Mechanism, accounted_history
from .prv import DEFAULT_EPS_ERROR, EpsilonBound, PRVComposer
from .rdp import check_delta

__all__ = [
    "LEVEL_CLIENT",
    "LEVEL_SAMPLE",
    "BudgetSnapshot",
    "BudgetTracker",
    "PartyBudget",
    "budget_history",
    "budget_snapshot",
    "client_epsilons",
    "client_mechanisms",
]

LEVEL_SAMPLE = "sample"
LEVEL_CLIENT = "client"

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


@dataclass(frozen=True)
class BudgetSnapshot:
    """Every party's budget after ``round`` (``None``: no record yet) at ``delta``."""

    round: Optional[int]
    delta: float
    clients: Mapping[int, PartyBudget] = field(default_factory=dict)
    population: Optional[PartyBudget] = None

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


class BudgetTracker:
    """Running per-party budgets of one run: feed each round's records, read the budgets.

    Re-querying after each round costs one FFT per distinct history on grids the
    composer caches (build them ahead with :meth:`prepare`); parties with identical
    histories share one computation. Figures equal :func:`budget_snapshot` of the same
    records to the last bit.

    Args:
        delta: the delta at which every epsilon is reported, in (0, 1).
        eps_error: half-width of the PRV band, in (0, 1].
        composer: a :class:`~accounting.prv.PRVComposer` to share (default: a new one).
    """

    def __init__(self, delta: float, eps_error: float = DEFAULT_EPS_ERROR, *, composer: Optional[PRVComposer] = None) -> None:
        self.delta = check_delta(delta)
        self._composer = composer if composer is not None else PRVComposer(eps_error)
        self._histories: dict[Optional[int], list[Mechanism]] = {}
        self._rounds: dict[Optional[int], set[int]] = {}
        self._budgets: dict[Optional[int], PartyBudget] = {}
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
        for index, record in enumerate(records):
            if self._last_round is not None and record.round < self._last_round:
                raise ValueError(f"records[{index}].round={record.round} precedes round {self._last_round} already added")
            self._last_round = record.round
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
        return self.snapshot()

    def snapshot(self) -> BudgetSnapshot:
        """Every party's budget after the records added so far."""
        return BudgetSnapshot(
            round=self._last_round,
            delta=self.delta,
            clients={c: self._budgets[c] for c in sorted(k for k in self._budgets if k is not None)},
            population=self._budgets.get(None),
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
