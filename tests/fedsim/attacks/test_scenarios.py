"""Every `fedsim attack` scenario against the real protocol: its verdict under each threat
model is the one the registry documents (the table the CLI and the README use).

The verdicts are computed from what happened, so these tests fail when a defence breaks
(or is missing): e.g. ``bad-share`` was BROKEN while the server reconstructed from the
first t shares and aborted on a bad one, ``out-of-range-input`` while the codec left no
guard bits. Cohorts stay small (n <= 8; partial-sum's
graph-only check keeps n = 100).
"""

from __future__ import annotations

import pytest

from fedsim.attacks.registry import (
    BROKEN,
    HOLDS,
    SCENARIOS,
    THREAT_MODELS,
    run_scenario,
)

SMALL = {"partial-sum": None, "oversize-message": 2}
"""Cohort per scenario for the tests (None: the scenario's default); the others use 7."""


CASES = [pytest.param(s.name, model, id=f"{s.name}-{model}") for s in SCENARIOS for model in THREAT_MODELS]


@pytest.mark.parametrize(("name", "threat_model"), CASES)
def test_scenario_gives_its_documented_verdict(name: str, threat_model: str) -> None:
    spec = next(s for s in SCENARIOS if s.name == name)
    result = run_scenario(name, threat_model, clients=SMALL.get(name, 7))
    assert (result.scenario, result.threat_model) == (name, threat_model)
    assert result.verdict == spec.expected_under(threat_model), f"{result.figure} | {result.explanation}"
    assert result.figure and result.explanation


def test_by_design_breaks_recover_the_victims_input_exactly() -> None:
    """Under semi-honest the two server deviations really unmask the victim (not a label)."""
    for name in ("dropout-lie", "key-substitution"):
        result = run_scenario(name, "semi-honest", clients=6)
        assert result.verdict == BROKEN
        assert "victim's input recovered: max error 0" in result.figure, result.figure


def test_dropout_lie_uses_the_weakest_threshold_each_model_accepts() -> None:
    """Semi-honest accepts a t where both stories fit (t <= (n + 1)/2 with the pairwise-key
    fallback, t <= n/2 without); active refuses every t <= n/2, the most two signed stories allow."""
    semi = run_scenario("dropout-lie", "semi-honest", clients=6)
    assert "t=3 of n=6" in semi.explanation, semi.explanation
    active = run_scenario("dropout-lie", "active", clients=6)
    assert active.verdict == HOLDS
    assert "refuse every t <= n/2 = 3" in active.explanation, active.explanation


def test_partial_sum_catches_a_cycle_graph() -> None:
    """The sizing the issue found, (t, k) = (2, 2): ten real deaths split the cycle almost always."""
    from fedsim.attacks.graph_leak import partial_sum

    result = partial_sum("semi-honest", clients=100, shape=(2, 2), graphs=4, patterns_per_graph=25)
    assert result.verdict == BROKEN
    leaked = int(result.figure.split(" of ")[0])
    assert leaked >= 90, result.figure


def test_partial_sum_components_of_a_harary_graph() -> None:
    from fedsim.attacks.graph_leak import components
    from secagg.graph import NeighbourGraph

    graph = NeighbourGraph(bytes(16), 1, tuple(range(1, 11)), 2)  # a 10-cycle in random order
    ring = graph.ring_order()
    assert len(components(graph, ring)) == 1
    removed = {ring[0], ring[5]}
    parts = components(graph, [u for u in ring if u not in removed])
    assert sorted(len(p) for p in parts) == [4, 4]


def test_chi_square_survival_function() -> None:
    from fedsim.attacks.distinguisher import chi_square_sf, homogeneity_p, uniformity_p

    # reference values (scipy.stats.chi2.sf)
    for statistic, dof, expected in [(255, 255, 0.48822252177040637), (300, 255, 0.02772752205390483),
                                     (400, 255, 1.6600025244123397e-08), (10, 3, 0.01856613546304325),
                                     (0.5, 1, 0.47950012218695337)]:
        assert chi_square_sf(statistic, dof) == pytest.approx(expected, rel=1e-9)
    import numpy as np

    skewed = np.repeat(np.arange(16), 1024)  # 16 of 256 values only
    assert uniformity_p(skewed) < 1e-100
    assert homogeneity_p(skewed, skewed) == pytest.approx(1.0)
    assert homogeneity_p(skewed, (skewed + 128) % 256) < 1e-100


def test_the_distinguisher_strips_every_mask_the_server_can() -> None:
    """Summed over the survivors, the stripped views are exactly the sum of the inputs:
    only masks between survivors are left, and those cancel (so stripping is real)."""
    import numpy as np

    from fedsim.attacks.distinguisher import _stripped_views
    from fedsim.attacks.rounds import MemoryRound, plain_sum, protocol_params
    from secagg import stages

    for model in THREAT_MODELS:
        rnd = MemoryRound(protocol_params(6, 4, model, dim=64))
        server = rnd.finish({stages.MASKED_INPUT_COLLECTION: {6}})
        assert not server.aborted, server.abort_reason
        views = _stripped_views(rnd)
        assert sorted(views) == list(server.survivors)
        total = np.zeros(64, dtype=np.uint32)
        for view in views.values():
            total += view
        assert np.array_equal(total, plain_sum(rnd.inputs, server.survivors))
        assert not any(np.array_equal(views[u], rnd.inputs[u]) for u in views)  # each alone stays masked


def test_run_scenario_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scenario='nope' is invalid: expected one of dropout-lie"):
        run_scenario("nope", "active")
    with pytest.raises(ValueError, match="threat_model='honest'"):
        run_scenario("replay", "honest")
    with pytest.raises(ValueError, match=r"clients=3 is invalid for replay: expected an int in \[4, 32\]"):
        run_scenario("replay", "active", clients=3)


def test_oversize_message_over_real_processes() -> None:
    """The one processes test: server, two honest ranks and an attacker rank sending an
    8 MiB frame (about 5 s here, most of it the forkserver's start)."""
    result = run_scenario("oversize-message", "semi-honest", clients=2, processes=True)
    assert result.verdict == HOLDS, f"{result.figure} | {result.explanation}"
    assert "exit codes [0, 0, 0, 0]" in result.explanation


def test_a_forgery_out_of_step_with_the_wire_format_is_an_error_not_a_hold() -> None:
    """A forged request refused for its layout says nothing about the defence."""
    from fedsim.attacks.rounds import (
        ForgeryRefused,
        MemoryRound,
        protocol_params,
        request,
    )
    from secagg import stages

    rnd = MemoryRound(protocol_params(5, 3, "semi-honest"))
    rnd.run_to(stages.UNMASKING)
    rnd.answer({1: request(rnd.params, stages.UNMASKING, 1, b"\x00\x00")})
    with pytest.raises(ForgeryRefused, match="client 1 refused a forged message for its layout"):
        rnd.check_forgeries()
