"""``partial-sum``: what an honest server learns from real dropouts on the SecAgg+ graph.

Bell et al., CCS 2020, §4: on a sparse k-regular graph the server removes, for each
survivor, its self mask and the pairwise masks it shares with dropped neighbours. If the
honest survivors split into several connected parts, the pairwise masks *within* each
part cancel in that part's sum, so an honest server following the protocol learns each
part's sum separately (a survivor whose neighbours all dropped is a part of one: its
update in the clear). The sizing must make that happen with probability <= 2^-40 for
every pattern of up to floor(max_dropout * n) real dropouts and c colluders.

The scenario takes the (t, k) the run's sizing chooses for n (the sparse graph, as
``SecureSumConfig.shape`` resolves it now), draws fresh random Harary graphs (each from
a fresh session id, :class:`secagg.graph.NeighbourGraph`) and, on each, uniformly random
sets of floor(max_dropout * n) dropped clients plus c colluders (who are not honest), and
counts the patterns whose honest survivors are disconnected. Dropouts are independent of
the graph (the graph is derived from the session after the cohort is fixed). Graph only:
no protocol round runs, so n = 100 (the default) or more is cheap. HOLDS iff no pattern
leaks.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable

from fedsim.attacks.registry import BROKEN, HOLDS, AttackResult
from fedsim.attacks.rounds import secure_sum_config, short
from secagg.graph import NeighbourGraph
from secagg.params import collusion_count

__all__ = ["components", "partial_sum"]

logger = logging.getLogger(__name__)

GRAPHS = 25
"""Random graphs (fresh session ids) per run."""
PATTERNS_PER_GRAPH = 40
"""Dropout patterns per graph."""


def components(graph: NeighbourGraph, members: Iterable[int]) -> list[set[int]]:
    """The connected parts of the subgraph of ``graph`` induced by ``members``."""
    left = set(members)
    parts = []
    while left:
        start = left.pop()
        part, frontier = {start}, [start]
        while frontier:
            u = frontier.pop()
            for v in graph.neighbours(u):
                if v in left:
                    left.discard(v)
                    part.add(v)
                    frontier.append(v)
        parts.append(part)
    return parts


def partial_sum(
    threat_model: str,
    *,
    clients: int = 100,
    processes: bool = False,
    shape: tuple[int, int | None] | None = None,
    graphs: int = GRAPHS,
    patterns_per_graph: int = PATTERNS_PER_GRAPH,
    seed: int = 0,
) -> AttackResult:
    """Dropout patterns at the sized bound on the sized graph; BROKEN if any leaks a partial sum.

    ``shape``: force (t, k) instead of the sizing's choice (to show what a weaker choice
    leaks); ``seed``: the patterns and session ids (public randomness of the simulation).
    """
    n = clients
    config = secure_sum_config(threat_model, graph="sparse")
    max_dropout = config.max_dropout
    colluders = collusion_count(n, config.collusion)
    if shape is None:
        try:
            shape = config.shape(n)
        except ValueError as exc:
            return AttackResult(
                "partial-sum", threat_model, HOLDS, "the sizing refuses this cohort: no round runs",
                f"n={n}, max_dropout={max_dropout}: {short(exc, 160)}",
            )
    t, k = shape
    dropped = math.floor(max_dropout * n)
    rng = random.Random(seed)
    ids = tuple(range(1, n + 1))
    leaks = isolated = aborts = total = 0
    worst = 1
    for _ in range(graphs):
        graph = NeighbourGraph(rng.randbytes(16), 1, ids, k)
        for _ in range(patterns_per_graph):
            gone = set(rng.sample(ids, dropped))
            colluding = set(rng.sample([u for u in ids if u not in gone], colluders)) if colluders else set()
            honest = [u for u in ids if u not in gone and u not in colluding]
            parts = components(graph, honest)
            total += 1
            worst = max(worst, len(parts))
            if len(parts) > 1:
                leaks += 1
                isolated += any(len(p) == 1 for p in parts)
            alive = set(ids) - gone
            aborts += any(len(alive.intersection(graph.closed_neighbourhood(u))) < t for u in alive)
    figure = (
        f"{leaks} of {total} patterns of {dropped} dropouts leak a partial sum ({leaks / total:.3f}); "
        f"{isolated} isolate a survivor; t={t}, k={k if k is not None else 'complete'}"
    )
    explanation = (
        f"n={n}, max_dropout={max_dropout:g}, c={colluders}; {graphs} random graphs x {patterns_per_graph} "
        f"uniform patterns; a pattern leaks when the honest survivors split (up to {worst} parts seen); "
        f"{aborts} patterns would abort for lack of t survivors in a neighbourhood"
    )
    return AttackResult("partial-sum", threat_model, BROKEN if leaks else HOLDS, figure, explanation)
