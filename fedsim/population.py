"""Cross-device populations: many virtual clients over few processes, a cohort per round.

A population of P virtual clients (ids 1..P) is spread round-robin over the W−1 client
processes: process r hosts the ids congruent to r modulo W−1 (:class:`Population`). Shards
come from the run's public seed (:func:`fedsim.data.partition.partition` over P clients), so the
same config gives the same data layout on every machine. A process holds one model and
trains its hosted cohort members one after the other (:class:`fedsim.client.trainer.LocalTrainer`):
memory does not grow with P.

The cohort of each round is drawn by the server from a fresh ChaCha20 CSPRNG keyed from the OS
(:class:`fedsim.dp.randomness.SecretRandom`), never from the public seed: amplification by
subsampling is only a guarantee if who took part stays secret (from everyone but the server,
which draws it).

- ``poisson``: every client joins independently with probability q. Client-level DP-FedAvg
  is then a Poisson-subsampled Gaussian with that q (McMahan et al., ICLR 2018, Sec. 3),
  which is what the accountant composes.
- ``fixed``: exactly m clients, uniformly without replacement. The Poisson analysis does
  not formally apply (docs/architecture.md, "Privacy semantics"); the accountant claims no
  amplification for them (:class:`accounting.ClientLevelGaussian`, ``"fixed_size"``), a
  sound but loose bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import RunConfig
from fedsim.dp.randomness import secret_random

COHORT_KINDS = ("poisson", "fixed")


@dataclass(frozen=True)
class Population:
    """P virtual clients hosted round-robin by ``processes`` client processes (ranks 1..W−1)."""

    size: int
    processes: int

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes={self.processes!r} is invalid: expected an integer >= 1")
        if self.size < self.processes:
            raise ValueError(f"population={self.size!r} is invalid: expected at least one client per process ({self.processes})")

    def hosted_by(self, rank: int) -> tuple[int, ...]:
        """The client ids hosted by ``rank`` (1-based client ranks)."""
        if not 1 <= rank <= self.processes:
            raise ValueError(f"rank={rank!r} is invalid: expected an integer in [1, {self.processes}]")
        return tuple(range(rank, self.size + 1, self.processes))


@dataclass(frozen=True)
class CohortSampling:
    """How the server picks each round's cohort: ``poisson`` at rate q, or ``fixed`` of size m."""

    kind: str
    rate: float = 1.0
    size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in COHORT_KINDS:
            raise ValueError(f"cohort={self.kind!r} is invalid: expected one of {COHORT_KINDS}")
        if self.kind == "poisson" and not 0 < self.rate <= 1:
            raise ValueError(f"cohort_rate={self.rate!r} is invalid: expected a number in (0, 1]")
        if self.kind == "fixed" and self.size < 1:
            raise ValueError(f"cohort_size={self.size!r} is invalid: expected an integer >= 1")

    def expected_size(self, population: int) -> int:
        """The planned cohort size m (the divisor of the noise shares), at least 1."""
        if self.kind == "fixed":
            return min(self.size, population)
        return max(1, round(self.rate * population))

    def accounted_size(self, population: int) -> int:
        """The cohort size the ledger records, so that its rate cohort / population is never below
        the true one: ``size`` for fixed cohorts; for Poisson the smallest k with k / P >= q (an
        expected size rounded down would under-state q, and so ε against observers)."""
        if self.kind == "fixed":
            return min(self.size, population)
        k = max(1, round(self.rate * population))
        return k + 1 if k / population < self.rate else k

    @property
    def accounting_name(self) -> str:
        """How the ledger names this sampling (:class:`accounting.ClientLevelGaussian`)."""
        return "poisson" if self.kind == "poisson" else "fixed_size"

    def sample(self, population: int) -> tuple[int, ...]:
        """Draw one round's cohort of clients 1..``population`` (sorted ids, possibly empty).

        ``fixed``: a uniform ``size``-subset; ``poisson``: each client independently w.p.
        ``rate``. Coins from a fresh :func:`~fedsim.dp.randomness.secret_random`.
        """
        if self.kind == "poisson" and self.rate == 1.0:
            return tuple(range(1, population + 1))
        rng = secret_random()
        if self.kind == "fixed":
            return tuple(sorted(1 + i for i in rng.sample_without_replacement(population, min(self.size, population))))
        members = rng.bernoulli_mask(population, self.rate)
        return tuple(c for c, joins in enumerate(members.tolist(), start=1) if joins)


def cohort_sampling(config: RunConfig) -> CohortSampling:
    """A run's cohort rule (``all`` is Poisson at rate 1: everyone, every round)."""
    if config.cohort == "fixed":
        return CohortSampling("fixed", size=config.cohort_size)
    return CohortSampling("poisson", rate=config.cohort_rate if config.cohort == "poisson" else 1.0)
