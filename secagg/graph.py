"""Who masks with whom: the complete graph (SecAgg) or a random Harary graph (SecAgg+).

Bell et al., CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", Sec. 3-4: replace the complete graph of Bonawitz et al. 2017 by a sparse
k-regular graph G; party u agrees pairwise masks with, and secret-shares its seeds
among, its neighbours N(u) only, so per-party cost is O(k) = O(log n) instead of O(n).
As there, G is a Harary graph H(n, k) (the circulant graph: ring position i is joined
to positions i +- 1, ..., i +- k/2) whose nodes are placed on the ring by a uniformly
random permutation.  H(n, k) is k-connected; after removing a random set of parties
the rest stays connected unless two runs of >= k/2 consecutive ring positions are
all removed (the bound used by :mod:`secagg.params`).

Shared randomness and its trust assumption: the permutation is the Fisher-Yates
shuffle driven by AES-256-CTR under a key derived with HKDF-SHA256 from the session id,
the round and the cohort, so every party recomputes the same graph from the round's
parameters with no extra message.  The session id is chosen by the server; this is
sound for an honest-but-curious server that draws it uniformly at random and for
colluding clients fixed before it is drawn (the adversary of Bell et al., whose
corruptions do not depend on G).  A malicious server could grind session ids to place
colluders around a victim; defending against that needs client-contributed randomness
(e.g. commit-reveal), which is not implemented.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.params import ProtocolParams
from secagg.prg import Keystream

__all__ = ["GRAPH_LABEL", "NeighbourGraph", "graph_for", "harary_positions", "random_permutation"]

GRAPH_LABEL: bytes = b"secagg/v1/neighbour-graph"
"""HKDF domain-separation label of the graph's permutation key."""

_DRAWS = 1024


def random_permutation(n: int, key: bytes) -> list[int]:
    """A uniformly random permutation of range(n): Fisher-Yates driven by AES-256-CTR(key).

    Each index j in [0, i] is an unbiased draw: 64-bit words >= the largest multiple
    of (i + 1) below 2^64 are rejected.
    """
    stream = Keystream(key, bytes(16))
    words = np.empty(_DRAWS, dtype=np.uint64)
    pending: list[int] = []
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = 2**64 - (2**64 % bound)
        while True:
            if not pending:
                stream.read_words(words)
                pending = words.tolist()[::-1]
            r = pending.pop()
            if r < limit:
                break
        j = r % bound
        order[i], order[j] = order[j], order[i]
    return order


def harary_positions(position: int, n: int, degree: int) -> list[int]:
    """Ring positions adjacent to ``position`` in H(n, degree), degree even: +-1..+-degree/2."""
    half = degree // 2
    return [(position + step) % n for step in range(-half, half + 1) if step != 0]


def _graph_key(session: bytes, round_idx: int, client_ids: Sequence[int], degree: int) -> bytes:
    cohort = hashlib.sha256(struct.pack(f">{len(client_ids)}Q", *client_ids)).digest()
    info = GRAPH_LABEL + struct.pack(">QQ", round_idx, degree) + cohort
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(bytes(session))


@dataclass(frozen=True)
class NeighbourGraph:
    """The round's graph on ``client_ids``: complete when ``degree`` is None, else a random
    Harary graph of even degree 2 <= degree <= n - 1 (derived from session and round).
    """

    session: bytes
    round_idx: int
    client_ids: tuple[int, ...]
    degree: int | None = None
    _ring: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _position: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.client_ids)
        if self.degree is not None:
            if self.degree % 2 or not 2 <= self.degree <= n - 1:
                raise ValueError(
                    f"degree must be even and in [2, {n - 1}] for {n} clients, got {self.degree}"
                )
            key = _graph_key(self.session, self.round_idx, self.client_ids, self.degree)
            ring = tuple(self.client_ids[i] for i in random_permutation(n, key))
        else:
            ring = tuple(self.client_ids)
        object.__setattr__(self, "_ring", ring)
        object.__setattr__(self, "_position", {u: i for i, u in enumerate(ring)})

    @property
    def complete(self) -> bool:
        """Whether every pair of clients is joined (classic SecAgg)."""
        return self.degree is None or self.degree == len(self.client_ids) - 1

    def neighbours(self, u: int) -> tuple[int, ...]:
        """N(u), sorted: the parties u masks with."""
        if u not in self._position:
            raise ValueError(f"client {u} is not in the cohort")
        if self.complete:
            return tuple(v for v in self.client_ids if v != u)
        n = len(self._ring)
        return tuple(sorted(self._ring[p] for p in harary_positions(self._position[u], n, self.degree)))

    def closed_neighbourhood(self, u: int) -> tuple[int, ...]:
        """N(u) with u itself, sorted: the holders of u's Shamir shares."""
        return tuple(sorted(self.neighbours(u) + (u,)))

    def ring_order(self) -> tuple[int, ...]:
        """Clients in ring order (the random permutation; the cohort order if complete)."""
        return self._ring


def graph_for(params: ProtocolParams, graph: NeighbourGraph | None = None) -> NeighbourGraph:
    """The round's graph: ``graph`` after checking it was built from ``params``, or a new one."""
    if graph is None:
        return NeighbourGraph(params.session, params.round_idx, params.client_ids, params.neighbours)
    built_from = (graph.session, graph.round_idx, graph.client_ids, graph.degree)
    if built_from != (params.session, params.round_idx, params.client_ids, params.neighbours):
        raise ValueError("graph must be the NeighbourGraph of these params (session, round, cohort, degree)")
    return graph
