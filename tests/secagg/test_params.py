"""Choosing and checking (threshold, neighbours): the attacks each refusal stops, and the
refusal messages (field, value, smallest accepted value).

Bell et al., CCS 2020, Sec. 4 (the Harary graph's connectivity after removals);
Bonawitz et al., CCS 2017, Sec. 6 (t > (n + c) / 2 against an active server)."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from secagg.graph import NeighbourGraph
from secagg.params import (
    SECURITY_BITS,
    ProtocolParams,
    binomial_cdf_below,
    check_secagg_params,
    choose_secagg_params,
    choose_threshold,
    disconnection_bound,
    hypergeometric_tail,
    removed_count,
    smallest_safe_neighbours,
    smallest_safe_threshold,
)
from secagg.protocol import run_in_memory
from secagg.stages import MASKED_INPUT_COLLECTION

SESSION = bytes(range(16))


def honest_survivors_connected(graph: NeighbourGraph, removed: set[int]) -> bool:
    """Whether the clients outside ``removed`` form one connected part of ``graph``."""
    alive = [u for u in graph.client_ids if u not in removed]
    seen, todo = {alive[0]}, [alive[0]]
    while todo:
        for v in graph.neighbours(todo.pop()):
            if v not in removed and v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(alive)


# --- probability helpers ------------------------------------------------------------------


def test_probability_helpers_against_direct_sums() -> None:
    assert math.isclose(binomial_cdf_below(10, 0.5, 3), (1 + 10 + 45) / 1024)
    assert binomial_cdf_below(5, 0.9, 0) == 0.0
    assert math.isclose(hypergeometric_tail(10, 3, 4, 2), (3 * 21 + 7) / 210)


def test_disconnection_bound_is_the_without_replacement_union_bound() -> None:
    # n * C(R, k/2) / C(n, k/2): 10 runs, each all removed with probability C(3, 2) / C(10, 2)
    assert math.isclose(disconnection_bound(10, 4, 3), 10 * 3 / 45)
    assert disconnection_bound(100, 22, 10) == 0.0  # fewer removed than a run of k/2 = 11
    assert math.isclose(disconnection_bound(10, 2, 1), 1.0)  # a cycle minus one client: the bound says nothing
    assert removed_count(100, 0.1, 3) == 13 and removed_count(10, 0.29, 0) == 2


# --- the cycle, and real deaths --------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_a_cycle_is_never_chosen_or_accepted_without_injected_dropouts(n: int) -> None:
    """The bug: with no injected dropouts, sparse sizing picked k = 2 for every cohort."""
    t, k = choose_secagg_params(n, 0.0, 0, "sparse")
    assert k is None or k > 2
    with pytest.raises(ValueError, match=r"^neighbours=2 is too small: .*the smallest safe neighbours is \d+"):
        check_secagg_params(n, 2, 2, 0.0, 0)
    check_secagg_params(n, t, k, 0.0, 0)


def test_two_real_deaths_split_a_cycle_so_the_server_learns_arc_sums() -> None:
    """The attack the sizing stops: a cycle minus two non-adjacent clients is two arcs."""
    graph = NeighbourGraph(SESSION, 1, tuple(range(1, 101)), 2)
    ring = graph.ring_order()
    assert not honest_survivors_connected(graph, {ring[0], ring[50]})


@pytest.mark.parametrize(("n", "collusion"), [(100, 0), (100, 5), (1000, 0)])
def test_real_deaths_at_the_declared_bound_leave_the_honest_survivors_connected(n: int, collusion: int) -> None:
    """200 random patterns of floor(0.1 n) deaths (plus the colluders) in the chosen graph."""
    t, k = choose_secagg_params(n, 0.0, collusion, "sparse")
    assert k is not None and k < n - 1, (t, k)
    rng = random.Random(f"deaths-{n}-{collusion}")  # test data, not secrets
    ids = tuple(range(1, n + 1))
    graphs = [NeighbourGraph(rng.randbytes(16), 1, ids, k) for _ in range(10)]
    for trial in range(200):
        removed = set(rng.sample(ids, math.floor(0.1 * n) + collusion))
        assert honest_survivors_connected(graphs[trial % len(graphs)], removed), (trial, sorted(removed))


def test_the_chosen_degree_is_the_smallest_that_survives_the_bound() -> None:
    for n in (100, 1000, 10_000):
        t, k = choose_secagg_params(n, 0.0, 0, "sparse")
        assert k == smallest_safe_neighbours(n, 0)
        removed = removed_count(n, 0.1, 0)
        assert disconnection_bound(n, k, removed) <= 2.0**-SECURITY_BITS < disconnection_bound(n, k - 2, removed)
        assert t == k // 2 + 1  # an honest majority of N[u]


def test_max_dropout_sizes_the_graph_and_the_larger_rate_wins() -> None:
    assert choose_secagg_params(100, 0.0, 0, "sparse", max_dropout=0.0) == (2, 2)  # no deaths declared
    k10 = choose_secagg_params(100, 0.0, 0, "sparse")[1]
    k20 = choose_secagg_params(100, 0.0, 0, "sparse", max_dropout=0.2)[1]
    assert k20 > k10
    injected = choose_secagg_params(100, 0.2, 0, "sparse", max_dropout=0.0, max_abort_probability=0.01)[1]
    assert injected >= k20
    with pytest.raises(ValueError, match="max_dropout"):
        check_secagg_params(10, 3, None, 0.0, 0, max_dropout=1.0)


# --- thresholds -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(2, None), (10, None), (100, 22)])
def test_threshold_one_is_refused_always(n: int, k: int | None) -> None:
    """An honest server that hears from one survivor would learn its update."""
    with pytest.raises(ValueError, match=r"^threshold=1 is too small: .* the smallest safe threshold is 2"):
        check_secagg_params(n, 1, k, 0.0, 0, max_dropout=0.0)
    check_secagg_params(n, 2, k, 0.0, 0, max_dropout=0.0)


def test_threshold_c_plus_one_releases_one_update() -> None:
    """The attack: with t = c + 1 the protocol completes with c colluders and one honest
    survivor, and the colluders' inputs subtracted from the sum leave that update."""
    params = ProtocolParams(SESSION, 1, (1, 2, 3, 4), 8, threshold=2)  # ProtocolParams knows no c
    rng = np.random.default_rng(0)  # test data, not secrets
    inputs = {u: rng.integers(0, 2**32, 8, dtype=np.uint64).astype(np.uint32) for u in params.client_ids}
    server = run_in_memory(params, inputs, {MASKED_INPUT_COLLECTION: {3, 4}})
    assert not server.aborted and server.survivors == (1, 2)
    colluder = 2
    assert np.array_equal(server.result - inputs[colluder], inputs[1])  # client 1's update, exactly
    with pytest.raises(
        ValueError,
        match=re.escape(
            "threshold=2 is too small: with collusion=1, the complete graph and cohort 4 the smallest safe "
            "threshold is 3 (t = c + 1 releases one update)"
        ),
    ):
        check_secagg_params(4, 2, None, 0.0, 1)
    check_secagg_params(4, 3, None, 0.0, 1)


@pytest.mark.parametrize(("n", "c", "smallest"), [(6, 0, 4), (6, 1, 4), (8, 2, 6), (100, 10, 56)])
def test_active_refuses_t_at_most_half_of_n_plus_c(n: int, c: int, smallest: int) -> None:
    """Two stories about who dropped must not both gather t honest signatures: at n = 6,
    t = 3 a server collected both kinds of share for one victim."""
    assert smallest_safe_threshold(n, None, c, active=True) == smallest == (n + c) // 2 + 1
    with pytest.raises(
        ValueError, match=rf"^threshold={smallest - 1} is too small for the active threat model: .*smallest safe threshold is {smallest}"
    ):
        check_secagg_params(n, smallest - 1, None, 0.0, c, active=True)
    check_secagg_params(n, smallest, None, 0.0, c, active=True)
    check_secagg_params(n, max(c + 2, n // 2 + 1), None, 0.0, c)  # semi-honest: an honest majority is enough


@pytest.mark.parametrize(("n", "collusion"), [(6, 0), (20, 2), (100, 0.05), (1000, 0.05)])
@pytest.mark.parametrize("graph", ["full", "sparse"])
def test_active_choices_exceed_half_of_the_neighbourhood_plus_its_colluders(n: int, collusion, graph: str) -> None:
    t, k = choose_secagg_params(n, 0.0, collusion, graph, active=True)
    c = math.ceil(collusion * n) if isinstance(collusion, float) else collusion
    s = n if k is None else k + 1
    assert 2 * t > s + (c if k is None else min(c, s))
    check_secagg_params(n, t, k, 0.0, collusion, active=True)


# --- messages: field, value, smallest accepted -----------------------------------------------


def quoted(pattern: str, message: str) -> int:
    found = re.search(pattern, message)
    assert found, message
    return int(found.group(1))


@pytest.mark.parametrize(
    ("n", "t", "k", "c", "active"),
    [(8, 2, None, 1, False), (10, 5, None, 4, False), (1000, 3, 60, 200, False), (100, 3, 28, 5, False),
     (50, 25, None, 0, True), (1000, 15, 30, 0, True)],
)
def test_a_refused_threshold_quotes_the_smallest_accepted_one(n: int, t: int, k, c: int, active: bool) -> None:
    with pytest.raises(ValueError) as refused:
        check_secagg_params(n, t, k, 0.0, c, active=active)
    message = str(refused.value)
    assert message.startswith(f"threshold={t} is too small"), message
    smallest = quoted(r"smallest safe threshold is (\d+)", message)
    assert smallest == smallest_safe_threshold(n, k, c, active=active) > t
    check_secagg_params(n, smallest, k, 0.0, c, active=active)  # accepted ...
    with pytest.raises(ValueError):
        check_secagg_params(n, smallest - 1, k, 0.0, c, active=active)  # ... and the smallest


@pytest.mark.parametrize(("n", "k", "c"), [(20, 2, 2), (100, 4, 0), (1000, 8, 50)])
def test_a_refused_degree_quotes_the_smallest_accepted_one(n: int, k: int, c: int) -> None:
    with pytest.raises(ValueError) as refused:
        check_secagg_params(n, k // 2 + 1, k, 0.0, c)
    message = str(refused.value)
    assert message.startswith(f"neighbours={k} is too small"), message
    smallest = quoted(r"smallest safe neighbours is (\d+)", message)
    assert smallest == smallest_safe_neighbours(n, c)
    check_secagg_params(n, smallest_safe_threshold(n, smallest, c), smallest, 0.0, c)
    with pytest.raises(ValueError, match=f"^neighbours={smallest - 2} "):
        check_secagg_params(n, smallest_safe_threshold(n, smallest - 2, c) or 2, smallest - 2, 0.0, c)


def test_a_degree_that_no_threshold_can_save_is_blamed_not_the_threshold() -> None:
    """The CLI bug: an unset threshold was blamed when k = 2 was refused with colluders."""
    with pytest.raises(ValueError, match=r"^neighbours=2 is too small: .*smallest safe neighbours is 10"):
        choose_threshold(20, 2, 0.0, 2)
    with pytest.raises(ValueError, match=r"^neighbours=30 is too small: .*no threshold up to k \+ 1 = 31 is safe \(the active"):
        choose_threshold(1000, 30, 0.0, 50, active=True, max_dropout=0.0)
    with pytest.raises(ValueError, match=r"^collusion=9 is too large for cohort 10: the complete graph needs t >= c \+ 2 = 11"):
        choose_threshold(10, None, 0.0, 9)
    with pytest.raises(ValueError, match=r"no sparse degree is safe for cohort 4: use the complete graph"):
        choose_threshold(4, 2, 0.0, 2, max_dropout=0.0)


def test_correctness_is_sized_on_the_injected_rate_only() -> None:
    """Availability, not privacy: real dropouts never make a threshold 'too large'."""
    check_secagg_params(4, 3, None, 0.0, 0, max_dropout=0.5)
    with pytest.raises(ValueError, match=r"^threshold=3 is too large: fewer than t holders survive .* the largest threshold meeting it is 2"):
        check_secagg_params(4, 3, None, 0.1, 0, max_abort_probability=0.01)
    with pytest.raises(ValueError, match=r"fewer than t holders survive.*no safe threshold \(>= 2\) meets it"):
        check_secagg_params(4, 2, None, 0.1, 0)
    assert choose_secagg_params(4, 0.1, 0, max_abort_probability=0.05) == (2, None)


# --- the choice --------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["full", "sparse"])
@pytest.mark.parametrize(
    ("n", "dropout", "collusion"), [(20, 0.0, 0), (100, 0.1, 0.1), (500, 0.3, 0.05), (1000, 0.1, 0.1)]
)
def test_chosen_params_pass_the_check(graph: str, n: int, dropout: float, collusion: float) -> None:
    t, k = choose_secagg_params(n, dropout, collusion, graph)
    check_secagg_params(n, t, k, dropout, collusion)
    ProtocolParams(SESSION, 1, tuple(range(1, n + 1)), 8, t, neighbours=k)
    if graph == "full":
        assert k is None and t > n // 2
    elif n >= 500:
        assert k is not None and k < 4 * math.log2(n) ** 1.5  # O(log n), far below n


def test_the_default_job_is_sized_as_before() -> None:
    assert choose_secagg_params(4, 0.0, 0) == (3, None)
    assert choose_secagg_params(2, 0.0, 0) == (2, None)  # t = 2 of 2: a round of two still runs


def test_unmeetable_params_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"^threshold=3 is too small: with collusion=3.*smallest safe threshold is 5"):
        check_secagg_params(10, 3, None, 0.0, 3)
    with pytest.raises(ValueError, match="fewer than t holders survive"):
        check_secagg_params(10, 9, None, 0.2, 0)
    with pytest.raises(ValueError, match="neighbours must be an even int"):
        check_secagg_params(10, 2, 3, 0.0, 0)
    with pytest.raises(ValueError, match="split into parts"):
        check_secagg_params(1000, 3, 4, 0.3, 0)
    with pytest.raises(ValueError, match="colluders among some client's 60 neighbours"):
        check_secagg_params(1000, 3, 60, 0.0, 200, max_dropout=0.0)
    with pytest.raises(ValueError, match="no threshold fits cohort=10"):
        choose_secagg_params(10, 0.3, 1)
    with pytest.raises(ValueError, match="dropout_rate"):
        choose_secagg_params(10, 1.0, 0)
    with pytest.raises(ValueError, match="collusion"):
        choose_secagg_params(10, 0.0, 1.5)
    with pytest.raises(ValueError, match="active must be a bool"):
        check_secagg_params(10, 6, None, 0.0, 0, active="yes")
