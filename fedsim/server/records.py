"""What the server records of a round: the clients' reports, their ledger records, the budgets.

Local training spends privacy whatever becomes of the update, so every client that reported
gets one ledger record per phase (a :class:`~accounting.PoissonSubsampledGaussian` with the
steps it ran), and with client-level DP every secure sum whose result the server saw adds
one client-level record (client=None): the Skellam mechanism at the noise the survivors
actually added, naming the survivors, the clients whose masked inputs reached the sum
(:class:`~accounting.DistributedSkellam`). A client whose process dies
before its report has no record: the server cannot know what it ran, and nothing of its
data left the process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from accounting import (
    AGAINST_OBSERVERS,
    AGAINST_SERVER,
    METHOD_NONE,
    BudgetTracker,
    DistributedSkellam,
    EpsilonBound,
    LedgerRecord,
    PoissonSubsampledGaussian,
    read_ledger,
)
from accounting.ledger import read_segments
from fedsim.dp.skellam import SkellamParams
from fedsim.population import CohortSampling
from fedsim.secure_sum.stages import RoundOutcome
from fedsim.server.callbacks import MethodRun, RoundCallback, RoundResult
from fedsim.transport.framing import FrameError
from fedsim.transport.payloads import RoundReport, unpack_report
from fedsim.transport.relay import ServerRelay
from fedsim.transport.vocabulary import Kind

__all__ = [
    "PrivacyLedger",
    "client_level_record",
    "gather_reports",
    "merge_outcomes",
    "sample_level_records",
]


def gather_reports(
    relay: ServerRelay, hosts: Mapping[int, Sequence[int]], round_idx: int, max_steps: Mapping[int, int], timeout_s: float
) -> dict[int, RoundReport]:
    """Each live process's REPORT (what its clients ran, at most ``max_steps[client]`` steps each);
    a malformed one drops the process."""
    reports: dict[int, RoundReport] = {}
    for rank, frame in relay.gather(list(hosts), Kind.REPORT, round_idx, "", timeout_s).items():
        try:
            foreign = sorted(set(frame.entries) - set(hosts[rank]))
            if foreign:
                raise FrameError(f"reports for clients {foreign} it does not host")
            reports.update({cid: unpack_report(data, cid, max_steps[cid]) for cid, data in frame.entries.items()})
        except FrameError as exc:
            relay.drop(rank, f"malformed REPORT in round {round_idx}: {exc}")
    return dict(sorted(reports.items()))


def sample_level_records(round_idx: int, reports: Mapping[int, RoundReport], delta: float) -> list[LedgerRecord]:
    """One record per reporting client: the Poisson-subsampled Gaussian it ran (by client id)."""
    return [
        LedgerRecord(
            round=round_idx,
            client=r.client,
            mechanism=PoissonSubsampledGaussian(r.noise_multiplier, r.sample_rate, r.steps),
            delta=delta,
        )
        for r in sorted(reports.values(), key=lambda r: r.client)
    ]


def client_level_record(
    round_idx: int, *, params: SkellamParams, sampling: CohortSampling, population: int, survivors: Sequence[int], delta: float
) -> LedgerRecord:
    """The client-level release of one secure sum: Skellam noise Sk(s·μ/n) from the s survivors
    of a cohort of n (dropouts lower it; record what was added, not what was planned), who
    they were, and the expected cohort that sets the sampling rate q = m / P."""
    return LedgerRecord(
        round=round_idx,
        client=None,
        mechanism=DistributedSkellam(
            mu=params.realized_mu(len(survivors)),
            l1_sensitivity=params.l1_sensitivity,
            l2_sensitivity=params.l2_sensitivity,
            dim=params.padded_dim,
            cohort_size=sampling.accounted_size(population),
            population=population,
            sampling=sampling.accounting_name,
            participants=tuple(sorted(survivors)),
            steps=1,
        ),
        delta=delta,
    )


def merge_outcomes(outcomes: Sequence[RoundOutcome]) -> RoundOutcome:
    """One round's outcome from its phases': aborted if any phase aborted, survivors of the last."""
    dropped: dict[str, tuple[int, ...]] = {}
    for outcome in outcomes:
        for stage, ids in outcome.dropped.items():
            dropped[stage] = tuple(sorted(set(dropped.get(stage, ())) | set(ids)))
    aborted = [o for o in outcomes if o.aborted]
    last = outcomes[-1]
    return RoundOutcome(
        cohort=outcomes[0].cohort,
        survivors=() if aborted else last.survivors,
        aborted=bool(aborted),
        abort_reason="; ".join(o.abort_reason or "" for o in aborted) or None,
        dropped=dropped,
        rejections=tuple(r for o in outcomes for r in o.rejections),
        corrupted=any(o.corrupted for o in outcomes),
        disputes=tuple(d for o in outcomes for d in o.disputes),
    )


class PrivacyLedger(RoundCallback):
    """Appends each round's records to the signed ledger and composes every party's ε.

    Adds to the round's metrics the worst client's sample-level ε (PRV upper bound and RDP)
    at the run's δ; to the summary also the accountant that gave it, the worst client's
    client-level ε against the server and against observers of the released models
    (Skellam RDP; None without client-level DP) and the ledger keys' fingerprints (the
    last segment's, and every segment's in order). A resumed run's accountant starts
    from every record the ledger already holds (replayed: the same figures to the last
    bit as composing them round by round).
    """

    def __init__(self, delta: float) -> None:
        self.budgets = BudgetTracker(delta)
        self.delta = delta
        self.worst = EpsilonBound(0.0, 0.0, 0.0, delta, METHOD_NONE)  # nothing released yet
        self.worst_rdp = 0.0
        self.client_level: dict[str, float | None] = {AGAINST_SERVER: None, AGAINST_OBSERVERS: None}

    def method_started(self, run: MethodRun) -> None:
        if run.ledger.path.is_file():
            records = read_ledger(run.ledger.path)
            if records:
                self._account(records)

    def round_ended(self, run: MethodRun, result: RoundResult) -> Mapping[str, Any]:
        run.ledger.append(result.records)
        self._account(result.records)
        return {"epsilon": self.worst.upper, "epsilon_rdp": self.worst_rdp, "delta": self.delta}

    def _account(self, records: Sequence[LedgerRecord]) -> None:
        snapshot = self.budgets.add(records)
        if snapshot.worst() is not None:
            self.worst, self.worst_rdp = snapshot.worst().prv, snapshot.worst().rdp
        for against in self.client_level:
            worst = snapshot.worst_client_level(against)
            if worst is not None:
                self.client_level[against] = worst.epsilon

    def method_ended(self, run: MethodRun) -> Mapping[str, Any]:
        return {
            "epsilon": self.worst.upper,
            "epsilon_method": self.worst.method,
            "epsilon_rdp": self.worst_rdp,
            "client_level_epsilon": self.client_level[AGAINST_SERVER],
            "client_level_epsilon_server": self.client_level[AGAINST_SERVER],
            "client_level_epsilon_observers": self.client_level[AGAINST_OBSERVERS],
            "delta": self.delta,
            "ledger_fingerprint": run.ledger.fingerprint,
            "ledger_fingerprints": ledger_fingerprints(run.ledger),
        }


def ledger_fingerprints(ledger) -> tuple[str, ...]:
    """Every segment's key fingerprint, in order (the ledger's own key last)."""
    earlier = [s.start.previous.fingerprint for s in read_segments(ledger.path)] if ledger.path.is_file() else []
    return (*earlier, ledger.fingerprint)
