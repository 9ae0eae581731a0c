"""SecureSumConfig: settings validated by field, and the (threshold, neighbours) it picks
for a cohort under its threat model and real-dropout bound (the bounds themselves:
tests/secagg/test_params.py; the multi-process sums: tests/integration/test_secure_sum.py)."""

from __future__ import annotations

import pytest

from fedsim.secure_sum.config import SecureSumConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"clip_range": 0.0}, "clip_range"), ({"modulus_bits": 16}, "modulus_bits"),
     ({"graph": "ring"}, "graph"), ({"neighbours": 4}, "neighbours"), ({"timeout_s": 0}, "timeout_s")],
)
def test_settings_are_validated(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SecureSumConfig(**kwargs)


def test_shape_chooses_safe_parameters_and_refuses_unsafe_ones() -> None:
    assert SecureSumConfig().shape(10) == (6, None)  # honest majority of the complete graph
    threshold, k = SecureSumConfig(graph="sparse", neighbours=10, threshold=0.5).shape(40)
    assert (threshold, k) == (6, 10)  # ceil(0.5 * 11)
    with pytest.raises(ValueError, match="at least 2 clients"):
        SecureSumConfig().shape(1)
    with pytest.raises(ValueError, match="^threshold=2 is too small: .*smallest safe threshold is 5"):
        SecureSumConfig(threshold=2, collusion=3).shape(10)
    with pytest.raises(ValueError, match="^threshold=1 is too small"):
        SecureSumConfig(threshold=1).shape(10)


def test_threat_model_and_max_dropout_are_validated() -> None:
    with pytest.raises(ValueError, match="threat_model='malicious' is invalid"):
        SecureSumConfig(threat_model="malicious")
    for bad in (-0.1, 0.6, True, "0.1"):
        with pytest.raises(ValueError, match="max_dropout=.* is invalid: expected a fraction in \\[0, 0.5\\]"):
            SecureSumConfig(max_dropout=bad)


def test_sparse_sizing_follows_the_declared_real_dropouts_not_only_the_injected_ones() -> None:
    """The bug: with no injected dropouts a sparse cohort got a cycle (k = 2)."""
    for n in (10, 100, 1000):
        _, k = SecureSumConfig(graph="sparse").shape(n)
        assert k is None or k > 2
    assert SecureSumConfig(graph="sparse", max_dropout=0.0).shape(100) == (2, 2)
    with pytest.raises(ValueError, match="^neighbours=2 is too small"):
        SecureSumConfig(graph="sparse", neighbours=2).shape(100)


def test_a_given_degree_with_an_unset_threshold_blames_the_degree() -> None:
    with pytest.raises(ValueError, match=r"^neighbours=2 is too small: .*smallest safe neighbours is 10"):
        SecureSumConfig(graph="sparse", neighbours=2, collusion=2).shape(20)
    assert SecureSumConfig(graph="sparse", neighbours=10, collusion=2).shape(20) == (6, 10)


def test_active_sizes_for_two_stories_and_turns_the_consistency_check_on() -> None:
    active = SecureSumConfig(threat_model="active", collusion=1)
    assert active.active and active.shape(6) == (4, None)  # t > (6 + 1) / 2
    with pytest.raises(ValueError, match="^threshold=3 is too small for the active threat model"):
        SecureSumConfig(threat_model="active", threshold=3).shape(6)
    params = active.protocol_params(bytes(16), 1, tuple(range(1, 7)), 8)
    assert params.active and params.consistency_check and params.threshold == 4
    plain = SecureSumConfig().protocol_params(bytes(16), 1, tuple(range(1, 7)), 8)
    assert not plain.active and not plain.consistency_check and plain.threshold == 4


def test_secure_sum_config_maps_the_run_fields() -> None:
    from fedsim.config import build_config
    from fedsim.secure_sum.config import secure_sum_config

    settings = secure_sum_config(build_config(secagg_threat_model="active", secagg_max_dropout=0.25))
    assert (settings.threat_model, settings.max_dropout, settings.consistency_check) == ("active", 0.25, True)
    assert secure_sum_config(build_config()).shape(4) == (3, None)  # the bundled default job


@pytest.mark.parametrize("threat_model", ["semi-honest", "active"])
def test_stage_limits_fit_every_real_reply_and_keep_key_stages_small(threat_model: str) -> None:
    """The relay's per-stage caps (checked before a body is read) hold every reply the real
    protocol sends, dropouts and accusations included, and a key stage's cap is far below
    MaskedInputCollection's, so a client cannot send megabytes at ShareKeys."""
    import os

    import numpy as np

    from fedsim.secure_sum.config import stage_limits
    from fedsim.secure_sum.identity import local_pki
    from secagg.graph import graph_for
    from secagg.protocol import ClientRound, ServerRound, drive
    from secagg.stages import MASKED_INPUT_COLLECTION, SHARE_KEYS

    n, dim = 8, 300
    config = SecureSumConfig(threat_model=threat_model, max_dropout=0.1)
    params = config.protocol_params(os.urandom(16), 1, tuple(range(1, n + 1)), dim)
    local = local_pki(params.client_ids)
    keys, pki = local.identities, (dict(local.verify_keys) if params.active else None)
    graph = graph_for(params)
    sizes: dict[str, int] = {}

    class Recording:
        def __init__(self, client: ClientRound) -> None:
            self.client = client

        def handle(self, message: bytes) -> bytes:
            stage = self.client.stage
            reply = self.client.handle(message)
            sizes[stage] = max(sizes.get(stage, 0), len(reply))
            return reply

    clients = {}
    for u in params.client_ids:
        client = ClientRound(params, u, graph=graph, signing_key=keys[u] if pki else None, verify_keys=pki)
        client.set_input(np.zeros(dim, np.uint32))
        clients[u] = Recording(client)
    server = drive(ServerRound(params, graph=graph, verify_keys=pki), clients, {MASKED_INPUT_COLLECTION: {n}})
    assert not server.aborted, server.abort_reason
    limits = stage_limits(dim, cohort=n, hosted=1)
    assert sizes and all(size < limits[stage] for stage, size in sizes.items()), (sizes, limits)
    large = stage_limits(100_000, cohort=n, hosted=4)
    assert large[SHARE_KEYS] * 10 < large[MASKED_INPUT_COLLECTION]
