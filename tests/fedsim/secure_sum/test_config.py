"""SecureSumConfig: settings validated by field, and the (threshold, neighbours) it picks
for a cohort (the multi-process sums: tests/integration/test_secure_sum.py)."""

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
    threshold, k = SecureSumConfig(graph="sparse", neighbours=4, threshold=0.5).shape(40)
    assert (threshold, k) == (3, 4)
    with pytest.raises(ValueError, match="at least 2 clients"):
        SecureSumConfig().shape(1)
    with pytest.raises(ValueError, match="threshold"):
        SecureSumConfig(threshold=2, collusion=3).shape(10)
