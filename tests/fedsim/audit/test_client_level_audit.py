"""The client-level audit on the real Skellam path: power at z = 0, no false alarm at the claimed z,
the attack it exists for (noise 10x smaller than the records claim is caught), and the pieces it
rests on (zero-out canaries, the ring sum is secure aggregation's result, the accountant's figure
is the budget tracker's for the run's records).

Setting: 300 canary clients beside 4 others, d = 4096, S = 1, 4 rounds, claimed z = 4, δ = 1e-5:
a canary's ε against the server is 2.17. Measured over 8 runs each: z = 0 proves ε ≥ 3.41-3.75
(150 of 150 guesses right: about the most 300 canaries prove at 95% over six guess sizes); the
claimed z 0.10-0.61; z / 10 3.41-3.75 (as at z = 0). About 1.0-1.6 s per run on one CPU thread.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from accounting import AGAINST_SERVER, SAMPLING_FIXED_SIZE, BudgetTracker
from accounting.skellam import skellam_epsilon, skellam_rdp_curve
from fedsim.audit.client_level import (
    accountant_budget,
    audit_client_level,
    audit_records,
    draw_canary_clients,
    ring_sum,
    round_inputs,
    run_canary_clients,
)
from fedsim.audit.errors import AuditError
from fedsim.dp.randomness import SecretRandom, session_id
from fedsim.dp.skellam import SkellamCodec, rotation_seed, skellam_params, to_ring
from secagg.params import ProtocolParams
from secagg.protocol import run_in_memory

DIM, CLIP, Z, ROUNDS, CANARIES, REAL, DELTA = 4096, 1.0, 4.0, 4, 300, 4, 1e-5
SETTING = {"dim": DIM, "clip": CLIP, "noise_multiplier": Z, "rounds": ROUNDS, "canaries": CANARIES, "real_clients": REAL, "delta": DELTA}


@pytest.fixture(scope="module")
def report():
    """The audit at the claimed z, with its control at z = 0."""
    return audit_client_level(**SETTING, control=True)


def test_without_noise_the_canary_clients_prove_an_epsilon_well_above_one(report):
    control = report.control
    assert control.noise_multiplier == 0.0 and control.params.mu == 0.0
    assert control.bound.epsilon > 3.0, control.bound
    # the real path decodes each canary's coordinate: R·S for a member, ~0 (the others' updates) for a non-member
    members, scores = control.members, control.scores
    assert np.all(np.abs(scores[members] - ROUNDS * CLIP) < 0.5) and np.all(np.abs(scores[~members]) < 0.5)
    assert control.out_of_range == 0


def test_at_the_claimed_noise_the_bound_stays_below_the_accountants_epsilon(report):
    assert report.epsilon.against == AGAINST_SERVER and report.epsilon.sums == ROUNDS
    assert 1.0 < report.claimed_epsilon < 3.0  # the setting is one where the audit has power to spare
    assert report.audited.bound.epsilon < report.claimed_epsilon, (report.audited.bound, report.epsilon)
    assert report.audited.out_of_range == 0


def test_noise_ten_times_smaller_than_the_records_claim_is_caught(report):
    """The test-only weakening: the mechanism runs at z/10, the ledger records carry the claimed z."""
    weakened = audit_client_level(**SETTING, control=False, mechanism_noise_scale=0.1)
    mechanism, claimed = weakened.audited.params, report.params  # noise std in the update's units: √(2μ)/γ = zS
    assert math.sqrt(2 * mechanism.mu) / mechanism.gamma == pytest.approx(math.sqrt(2 * claimed.mu) / claimed.gamma / 10)
    assert weakened.epsilon == report.epsilon and weakened.to_dict()["mechanism_noise_multiplier"] == pytest.approx(Z / 10)
    assert weakened.audited.bound.epsilon > weakened.claimed_epsilon, (weakened.audited.bound, weakened.epsilon)


def test_the_accountant_figure_is_the_budget_trackers_for_the_runs_records(report):
    cohort = range(1, REAL + CANARIES + 1)
    params = skellam_params(DIM, CLIP, Z, len(cohort))
    records = audit_records(params, ROUNDS, cohort, DELTA)
    assert [r.round for r in records] == list(range(1, ROUNDS + 1))
    for record in records:
        m = record.mechanism
        assert record.client is None and m.participants == tuple(cohort) and m.sampling == SAMPLING_FIXED_SIZE
        assert m.mu == params.realized_mu(len(cohort)) == pytest.approx(params.mu, rel=1e-15)  # s·μ/m, all survive
        assert (m.l1_sensitivity, m.l2_sensitivity, m.dim) == (params.l1_sensitivity, params.l2_sensitivity, 4096)
    tracker = BudgetTracker(DELTA)
    for record in records:  # round by round, as a run's PrivacyLedger feeds it
        snapshot = tracker.add([record])
    budgets = snapshot.client_level_budgets(AGAINST_SERVER)
    assert {budgets[c].epsilon for c in cohort} == {report.claimed_epsilon}  # every canary (and client) alike
    assert budgets[REAL + 1] == report.epsilon == accountant_budget(records, DELTA, REAL + 1)
    # independently: R compositions of the unsampled Skellam RDP of one sum, converted at δ
    independent, _ = skellam_epsilon(ROUNDS * skellam_rdp_curve(records[0].mechanism.mu, params.l1_sensitivity, params.l2_sensitivity), DELTA)
    assert report.claimed_epsilon == pytest.approx(independent, rel=1e-12)
    with pytest.raises(ValueError, match="client=999 is in no secure sum"):
        accountant_budget(records, DELTA, 999)


def test_a_non_member_canary_sends_only_its_noise_share_and_a_member_exactly_the_clip():
    """Zero-out adjacency: the non-member's rounded input is exactly 0; the member's decodes to S·e_j."""
    rng = SecretRandom()
    canaries = draw_canary_clients(256, 8, CLIP, rng)
    codec = SkellamCodec(skellam_params(256, CLIP, Z, 10))
    seed = rotation_seed(session_id(), 1)
    for index in range(canaries.count):
        rounded = codec.rounded_input(canaries.update(index, 256), seed, rng.numpy)
        if not canaries.members[index]:
            assert not rounded.any()
            continue
        assert math.sqrt(float(np.dot(rounded, rounded))) <= codec.params.l2_sensitivity
        decoded = codec.decode_sum(to_ring(rounded, 32), 1, seed)
        expected = torch.zeros(256)
        expected[int(canaries.coordinates[index])] = CLIP
        assert torch.allclose(decoded, expected, atol=1e-3)
    assert len(set(canaries.coordinates.tolist())) == canaries.count


def test_the_ring_sum_is_what_secure_aggregation_returns():
    """The audit sums the ring inputs directly; the real in-memory protocol, masks and all, gives the same."""
    rng = SecretRandom()
    canaries = draw_canary_clients(64, 3, CLIP, rng, first_id=4)
    codec = SkellamCodec(skellam_params(64, CLIP, Z, 6))
    session = session_id()
    inputs = round_inputs(codec, rotation_seed(session, 1), canaries, (1, 2, 3), rng)
    assert sorted(inputs) == [1, 2, 3, 4, 5, 6]
    server = run_in_memory(ProtocolParams(session, 1, tuple(sorted(inputs)), 64, threshold=4), inputs)
    assert not server.aborted and server.survivors == (1, 2, 3, 4, 5, 6)
    assert np.array_equal(server.result, ring_sum(list(inputs.values()), 32))


def test_bad_settings_name_the_setting():
    with pytest.raises(AuditError, match=r"canaries=5000 is invalid: expected an integer in \[2, 4096\]"):
        run_canary_clients(**{**SETTING, "canaries": 5000})
    with pytest.raises(AuditError, match="client_noise_multiplier=0.0 is invalid: expected a number > 0"):
        audit_client_level(**{**SETTING, "noise_multiplier": 0.0})
    with pytest.raises(AuditError, match=r"mechanism_noise_scale=2 is invalid"):
        audit_client_level(**SETTING, mechanism_noise_scale=2)
    with pytest.raises(AuditError, match="rounds=0 is invalid"):
        run_canary_clients(**{**SETTING, "rounds": 0})
