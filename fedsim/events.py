"""What the server reports while it runs: per-round metrics and per-method summaries.

Library code never prints; the CLI passes an :class:`Observer` to render progress.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from fedsim.rundir import METRICS_FORMAT_VERSION, SUMMARY_FORMAT_VERSION


@dataclass(frozen=True)
class RoundMetrics:
    """One row of ``metrics.jsonl``. ``accuracy``/``loss`` are None on rounds not evaluated.

    ``clients``: clients that trained and reported (each has a ledger record this round);
    ``survivors``: clients whose update is in the applied mean (0 when ``aborted``);
    ``dropped``: per protocol stage, the clients lost there;
    ``aborted``: the secure sum did not complete, the global model is unchanged, and
    ``abort_reason`` says why (a sum that failed the decode-time range check aborts as
    ``corrupted``: not applied, but the server saw it, so it is accounted);
    ``rejections``: the protocol's named rejections, each ``{"client", "stage",
    "verdict", "reason"}`` with verdict ``rejected`` (its message was refused) or
    ``malicious`` (the server holds proof it misbehaved); ``disputes``: pairs of clients
    whose channel-key checks disagreed, ``{"clients": [u, v], "reason"}`` (one of them
    lied, the server cannot tell which; nothing passed between them). ``train_seconds``: the server's wait for local training
    (the clients' reports); ``eval_seconds``: evaluation; the rest of ``seconds`` is
    orchestration (cohort, relay, secure aggregation, ledger, accounting, checkpoint).
    """

    method: str
    round: int
    accuracy: float | None
    loss: float | None
    epsilon: float
    epsilon_rdp: float
    delta: float
    clients: int
    seconds: float
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    survivors: int = 0
    dropped: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    aborted: bool = False
    abort_reason: str | None = None
    corrupted: bool = False
    rejections: tuple[Mapping[str, Any], ...] = ()
    disputes: tuple[Mapping[str, Any], ...] = ()
    format_version: int = METRICS_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MethodSummary:
    """The outcome of one method: what the final table shows, also saved as summary.json.

    ``epsilon``/``epsilon_rdp``: the worst client's sample-level ε (PRV upper bound, RDP);
    ``client_level_epsilon_server`` / ``client_level_epsilon_observers``: the worst client's
    client-level ε (Skellam RDP) against the server (no cohort amplification) and against
    observers of the released models (amplified by Poisson cohorts); None without
    client-level DP. ``client_level_epsilon``: the server figure (the one that holds
    against everyone), kept for readers of older summaries. ``dropped_processes``: client
    processes dropped so far in the run (rank: why). ``ledger_fingerprint``: the key of
    the ledger's last segment; ``ledger_fingerprints``: every segment's, in order (one per
    ``fedsim run`` / ``--resume`` that wrote it; pin them all with ``fedsim budget verify``).
    """

    method: str
    rounds: int
    initial_accuracy: float
    accuracy: float
    loss: float
    epsilon: float
    epsilon_method: str
    epsilon_rdp: float
    client_level_epsilon: float | None
    delta: float
    run_dir: str
    ledger_fingerprint: str
    seconds: float
    aborted_rounds: int = 0
    dropped_processes: Mapping[int, str] = field(default_factory=dict)
    client_level_epsilon_server: float | None = None
    client_level_epsilon_observers: float | None = None
    ledger_fingerprints: tuple[str, ...] = ()
    format_version: int = SUMMARY_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Observer(Protocol):
    """Callbacks the server (rank 0) makes while a job runs."""

    def method_started(self, method: str, rounds: int, ledger_fingerprint: str, completed: int = 0) -> None:
        """``completed``: rounds already done before this start (a resumed run)."""

    def round_finished(self, metrics: RoundMetrics) -> None: ...

    def method_finished(self, summary: MethodSummary) -> None: ...


class NullObserver:
    """An observer that ignores everything (non-interactive use, tests)."""

    def method_started(self, method: str, rounds: int, ledger_fingerprint: str, completed: int = 0) -> None:
        pass

    def round_finished(self, metrics: RoundMetrics) -> None:
        pass

    def method_finished(self, summary: MethodSummary) -> None:
        pass
