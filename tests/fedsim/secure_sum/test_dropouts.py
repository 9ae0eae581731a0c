"""Dropout plans (injected faults of the secure sum): reproducible, at the asked rate and stages."""

from __future__ import annotations

import pytest

from fedsim.secure_sum.dropouts import DropoutPlan


def test_dropout_plan_is_reproducible_and_honours_rate_and_schedule() -> None:
    plan = DropoutPlan(rate=0.2, stages=("ShareKeys",), schedule={3: {"Unmasking": [4]}}, seed=7)
    draws = [plan.drops(r, "ShareKeys", c) for r in range(1, 51) for c in range(1, 41)]
    assert draws == [DropoutPlan(rate=0.2, stages=("ShareKeys",), seed=7).drops(r, "ShareKeys", c)
                     for r in range(1, 51) for c in range(1, 41)]
    assert 0.16 < sum(draws) / len(draws) < 0.24  # 2000 draws, sd 0.009
    assert not any(plan.drops(r, "AdvertiseKeys", c) for r in range(1, 20) for c in range(1, 20))
    assert plan.drops(3, "Unmasking", 4) and not plan.drops(4, "Unmasking", 4)
    assert DropoutPlan(rate=0.2, seed=8).drops(1, "ShareKeys", 1) in (True, False)
    with pytest.raises(ValueError, match="dropout stage 'Sharekeys'"):
        DropoutPlan(schedule={1: {"Sharekeys": [1]}})
    with pytest.raises(ValueError, match="dropout_rate"):
        DropoutPlan(rate=1.0)
