"""The decode-time range check: a sum no clipped inputs can produce is flagged (issue 10, item 5).

The attack first: a client that skips the codec and puts ring values outside [-c, c]
into its masked input, or values that wrap the ring.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secagg.encoding import FixedPointCodec, as_ring_array, wrapping_sum

GUARD = 8


def _codes(codec: FixedPointCodec, rows: list[list[float]]) -> list[torch.Tensor]:
    return [codec.encode(torch.tensor(row, dtype=torch.float32), bytes([i]) * 32) for i, row in enumerate(rows)]


@pytest.mark.parametrize("bits", [32, 64])
def test_honest_extremes_pass(bits: int) -> None:
    """Every party at +c (or -c) on a coordinate: the largest honest sum is in range."""
    n = 5
    codec = FixedPointCodec(1.0, n, bits, guard_bits=GUARD)
    codes = _codes(codec, [[1.0, -1.0, 0.3]] * n)
    total = as_ring_array(wrapping_sum(codes))
    assert codec.out_of_range(total, n) == 0
    assert torch.allclose(codec.decode_sum(total), torch.tensor([5.0, -5.0, 1.5]), atol=1e-4)


def test_unclipped_input_is_flagged() -> None:
    """The evaluation's attack: +5.0 in a +-1 clip range with 4 parties went unnoticed."""
    n = 4
    codec = FixedPointCodec(1.0, n, 32, guard_bits=GUARD)
    honest = _codes(codec, [[1.0, 0.0]] * (n - 1))
    forged = torch.tensor([round(5.0 * codec.scale) + round(1.0 * codec.scale), 0], dtype=torch.int32)
    total = as_ring_array(wrapping_sum(honest + [forged]))
    assert codec.out_of_range(total, n) == 1


def test_wrapping_input_is_flagged() -> None:
    """2^31 as a ring value (it decoded to -5.0 in a +-4 range without guard bits)."""
    n = 4
    codec = FixedPointCodec(1.0, n, 32, guard_bits=GUARD)
    honest = _codes(codec, [[0.5, -0.5]] * (n - 1))
    forged = torch.tensor(np.array([2**31, 0], dtype=np.uint32).view(np.int32))
    total = as_ring_array(wrapping_sum(honest + [forged]))
    assert codec.out_of_range(total, n) == 1
    assert abs(float(codec.decode_sum(total)[0])) > n  # what would have been applied


def test_fewer_survivors_tighten_the_bound() -> None:
    """The bound is survivors x c: three parties' worth from two survivors is flagged."""
    codec = FixedPointCodec(1.0, 4, 32, guard_bits=GUARD)
    total = as_ring_array(wrapping_sum(_codes(codec, [[1.0]] * 3)))
    assert codec.out_of_range(total, 3) == 0
    assert codec.out_of_range(total, 2) == 1


def test_guard_bits_cost_precision_not_range() -> None:
    plain, guarded = FixedPointCodec(1.0, 4, 32), FixedPointCodec(1.0, 4, 32, guard_bits=GUARD)
    assert plain.frac_bits - guarded.frac_bits == GUARD
    with pytest.raises(ValueError, match="guard_bits"):
        FixedPointCodec(1.0, 4, 32, guard_bits=17)
    with pytest.raises(ValueError, match="64-bit ring"):
        FixedPointCodec(1.0, 2**20, 32, guard_bits=GUARD)
