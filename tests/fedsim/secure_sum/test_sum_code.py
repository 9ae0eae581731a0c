"""One secure sum's code (SumCode): the fixed-point code without client-level DP, the Skellam
mechanism with it; the decode-time range check on both, against a client that skips the code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.dp.randomness import SecretRandom
from fedsim.secure_sum.config import SecureSumConfig
from fedsim.secure_sum.exchange import checked_sum, sum_code
from fedsim.secure_sum.stages import RoundOutcome
from secagg.encoding import ring_dtype

SESSION = bytes(16)
DIM, COHORT = 300, 4


def ring_sum(inputs: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(inputs[0])
    for x in inputs:
        np.add(total, x, out=total)  # unsigned: wraps mod 2^b, as the protocol's result
    return total


def outcome() -> RoundOutcome:
    return RoundOutcome(tuple(range(1, COHORT + 1)), tuple(range(1, COHORT + 1)), False, None)


def updates() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)  # public test data
    return [torch.randn(DIM, generator=g) * 0.01 for _ in range(COHORT)]


def test_the_skellam_code_pads_sums_and_decodes_the_cohorts_noisy_sum():
    config = SecureSumConfig(client_noise_multiplier=0.5, client_clip=1.0)
    code = sum_code(config, session=SESSION, exchange=3, dim=DIM, cohort_size=COHORT)
    assert code.dim == config.ring_dim(DIM) == 512
    rng = SecretRandom()
    inputs = [code.encode(u, rng) for u in updates()]
    assert all(x.shape == (512,) and x.dtype == ring_dtype(32) for x in inputs)
    checked, total = checked_sum(code, ring_sum(inputs), outcome())
    assert not checked.aborted and total.shape == (DIM,)
    error = total - sum(updates())
    assert 0.3 < float(error.std()) < 0.7  # the sum carries noise of std z·S = 0.5


def test_an_input_outside_the_skellam_code_is_flagged_corrupted_and_not_applied():
    config = SecureSumConfig(client_noise_multiplier=0.5, client_clip=1.0)
    code = sum_code(config, session=SESSION, exchange=3, dim=DIM, cohort_size=COHORT)
    rng = SecretRandom()
    inputs = [code.encode(u, rng) for u in updates()]
    inputs[0] = inputs[0].copy()
    inputs[0][7] = (int(inputs[0][7]) + 2**30) % 2**32  # a ring value no clipped, noised input reaches
    checked, total = checked_sum(code, ring_sum(inputs), outcome())
    assert total is None and checked.aborted and checked.corrupted
    assert "1 coordinate(s)" in checked.abort_reason and "honest bound" in checked.abort_reason


def test_without_client_level_dp_the_fixed_point_code_is_used_as_before():
    config = SecureSumConfig(clip_range=1.0)
    code = sum_code(config, session=SESSION, exchange=3, dim=DIM, cohort_size=COHORT)
    assert code.dim is None and code.skellam is None
    rng = SecretRandom()
    inputs = [code.encode(u, rng) for u in updates()]
    checked, total = checked_sum(code, ring_sum(inputs), outcome())
    assert not checked.aborted
    torch.testing.assert_close(total, sum(updates()), atol=COHORT * 2.0**-code.fixed.frac_bits, rtol=0)


def test_the_skellam_scale_is_the_largest_cohorts_so_the_sum_does_not_reveal_the_cohort_size():
    """A Poisson cohort's size must not show in the release: the total noise is the same and the
    decoded sum's lattice (1/γ) too, whatever n is; only each member's share μ/n changes."""
    config = SecureSumConfig(client_noise_multiplier=0.5, client_clip=1.0, population=1000)
    small, large = config.skellam(DIM, 3), config.skellam(DIM, 40)
    assert small.gamma == large.gamma == config.skellam(DIM, 1000).gamma
    assert small.mu == large.mu and small.l2_sensitivity == large.l2_sensitivity
    assert small.realized_mu(3) == pytest.approx(large.realized_mu(40))
    assert small.mu / small.planned > large.mu / large.planned
