"""What the server reports while it runs: per-round metrics and per-method summaries.

Library code never prints; the CLI passes an :class:`Observer` to render progress.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class RoundMetrics:
    """One row of ``metrics.jsonl``. ``accuracy``/``loss`` are None on rounds not evaluated."""

    method: str
    round: int
    accuracy: float | None
    loss: float | None
    epsilon: float
    delta: float
    clients: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MethodSummary:
    """The outcome of one method: what the final table shows, also saved as summary.json."""

    method: str
    rounds: int
    initial_accuracy: float
    accuracy: float
    loss: float
    epsilon: float
    epsilon_method: str
    delta: float
    run_dir: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Observer(Protocol):
    """Callbacks the server (rank 0) makes while a job runs."""

    def method_started(self, method: str, rounds: int) -> None: ...

    def round_finished(self, metrics: RoundMetrics) -> None: ...

    def method_finished(self, summary: MethodSummary) -> None: ...


class NullObserver:
    """An observer that ignores everything (non-interactive use, tests)."""

    def method_started(self, method: str, rounds: int) -> None:
        pass

    def round_finished(self, metrics: RoundMetrics) -> None:
        pass

    def method_finished(self, summary: MethodSummary) -> None:
        pass
