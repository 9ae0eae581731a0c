"""Injected dropouts: which virtual client goes silent at which protocol stage of which round.

Two ways to say it, combinable:

- a rate: at every stage in ``stages``, every client still in the round drops with
  probability ``rate``, decided by a hash of (seed, round, stage, client), so every
  process (and a test) computes the same decision with no communication;
- a schedule ``{round: {stage: [client ids]}}``: exactly those clients drop there.

A dropped client simply does not answer the stage's message, nor any later one of that
round, exactly as a client that lost its connection (Bonawitz et al., CCS 2017, Sec. 4:
"users may drop out at any point"). It trained, so it still reports what it ran: the
ledger records its local training, whatever happens to its update.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedsim.transport.vocabulary import DROPOUT_STAGES

__all__ = ["DropoutPlan"]


@dataclass(frozen=True)
class DropoutPlan:
    """Seeded per-stage dropout rate plus an explicit schedule (see the module doc)."""

    rate: float = 0.0
    stages: tuple[str, ...] = DROPOUT_STAGES
    schedule: Mapping[int, Mapping[str, Sequence[int]]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout_rate={self.rate!r} is invalid: expected a number in [0, 1)")
        unknown = [s for s in self.stages if s not in DROPOUT_STAGES]
        unknown += [s for stages in self.schedule.values() for s in stages if s not in DROPOUT_STAGES]
        if unknown:
            raise ValueError(f"dropout stage {unknown[0]!r} is invalid: expected one of {DROPOUT_STAGES}")

    def drops(self, round_idx: int, stage: str, client_id: int) -> bool:
        """Whether ``client_id`` goes silent at ``stage`` of round ``round_idx``."""
        if client_id in self.schedule.get(round_idx, {}).get(stage, ()):
            return True
        return self.rate > 0 and stage in self.stages and self._uniform(round_idx, stage, client_id) < self.rate

    def _uniform(self, round_idx: int, stage: str, client_id: int) -> float:
        """A public, reproducible uniform draw in [0, 1) for one (round, stage, client)."""
        key = struct.pack(">QQQ", self.seed, round_idx, client_id) + stage.encode("ascii")
        digest = hashlib.blake2b(key, digest_size=8, person=b"fedsim-dropout").digest()
        return int.from_bytes(digest, "big") / 2.0**64

    @property
    def active(self) -> bool:
        """True if any dropout is injected at all."""
        return self.rate > 0 or any(any(ids for ids in stages.values()) for stages in self.schedule.values())
