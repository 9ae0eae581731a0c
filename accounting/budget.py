"""Per-client privacy budgets, recomputed from ledger records alone.

Each client's guarantee composes exactly the mechanisms recorded for that client
(DESIGN.md, "Privacy semantics": one accountant per client, fed only what it ran).
"""

from __future__ import annotations

import numbers
from typing import Iterable, Optional

from .ledger import LedgerRecord
from .mechanisms import Mechanism
from .prv import EpsilonBound, prv_epsilon

__all__ = ["client_mechanisms", "client_epsilons"]


def _check_upto_round(upto_round: Optional[int]) -> Optional[int]:
    if upto_round is None:
        return None
    if isinstance(upto_round, bool) or not isinstance(upto_round, numbers.Integral) or upto_round < 0:
        raise ValueError(f"upto_round must be None or an integer >= 0, got {upto_round!r}")
    return int(upto_round)


def client_mechanisms(
    records: Iterable[LedgerRecord], upto_round: Optional[int] = None
) -> dict[int, list[Mechanism]]:
    """Mechanisms per client, in ledger order, from records with ``round <= upto_round``.

    ``upto_round=None`` takes every record. Clients with no such record are absent.
    Keys are in ascending client order.
    """
    limit = _check_upto_round(upto_round)
    per_client: dict[int, list[Mechanism]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, LedgerRecord):
            raise TypeError(f"records[{index}] must be a LedgerRecord, got {type(record).__name__}")
        if limit is not None and record.round > limit:
            continue
        per_client.setdefault(record.client, []).append(record.mechanism)
    return {client: per_client[client] for client in sorted(per_client)}


def client_epsilons(
    records: Iterable[LedgerRecord],
    delta: float,
    upto_round: Optional[int] = None,
    eps_error: float = 0.01,
) -> dict[int, EpsilonBound]:
    """``prv_epsilon`` of each client's recorded mechanisms (rounds ``<= upto_round``) at ``delta``."""
    return {
        client: prv_epsilon(mechanisms, delta, eps_error)
        for client, mechanisms in client_mechanisms(records, upto_round).items()
    }
