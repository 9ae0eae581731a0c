"""Robust Shamir reconstruction over GF(2^31 - 1): Gaussian elimination, Berlekamp-Welch,
Lagrange evaluation anywhere, and robust_reconstruct with a check oracle; key checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.channel import key_check, open_shares, seal_shares
from secagg.shamir import (
    PRIME,
    berlekamp_welch,
    evaluate_polynomial,
    interpolate_at,
    join_limbs,
    lagrange_at_zero,
    lagrange_basis_at,
    robust_reconstruct,
    share_secrets,
    solve_mod_p,
)

SESSION = bytes(range(16))


def _checker(secret: bytes):
    def accept(limbs: np.ndarray) -> bytes | None:
        try:
            value = join_limbs(limbs)
        except ValueError:
            return None
        return value if value == secret else None

    return accept


def test_solve_mod_p_finds_solutions_and_detects_inconsistency() -> None:
    a = np.array([[2, 3], [5, 7], [1, 1]], dtype=np.uint64)
    x = np.array([11, PRIME - 4], dtype=np.uint64)
    b = np.array([int(sum(int(a[i, j]) * int(x[j]) for j in range(2)) % PRIME) for i in range(3)], dtype=np.uint64)
    assert np.array_equal(solve_mod_p(a, b), x)
    b_bad = b.copy()
    b_bad[2] = (b_bad[2] + 1) % PRIME
    assert solve_mod_p(a, b_bad) is None
    under = solve_mod_p(np.array([[1, 1]], dtype=np.uint64), np.array([5], dtype=np.uint64))
    assert int(under.sum()) % PRIME == 5  # one of many solutions


def test_lagrange_basis_matches_interpolation_at_zero_and_at_nodes() -> None:
    xs = [3, 9, 14, 200]
    assert np.array_equal(lagrange_basis_at(xs, [0])[0], lagrange_at_zero(xs))
    assert np.array_equal(lagrange_basis_at(xs, xs), np.eye(4, dtype=np.uint64))
    coefficients = [5, PRIME - 1, 17, 123456]
    values = evaluate_polynomial(coefficients, xs)[:, None]
    assert np.array_equal(interpolate_at(xs, values, [1, 2, 77])[:, 0], evaluate_polynomial(coefficients, [1, 2, 77]))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_berlekamp_welch_corrects_up_to_half_the_redundancy(data: st.DataObject) -> None:
    t = data.draw(st.integers(1, 8))
    h = data.draw(st.integers(t, t + 10))
    e = (h - t) // 2
    xs = data.draw(st.lists(st.integers(1, PRIME - 1), min_size=h, max_size=h, unique=True))
    coefficients = [int.from_bytes(os.urandom(4), "big") % PRIME for _ in range(t)]
    ys = evaluate_polynomial(coefficients, xs)
    wrong = data.draw(st.lists(st.integers(0, h - 1), max_size=e, unique=True))
    for i in wrong:
        ys[i] = (ys[i] + data.draw(st.integers(1, PRIME - 1))) % PRIME
    assert berlekamp_welch(xs, ys, t) == coefficients


def test_berlekamp_welch_gives_up_beyond_its_radius() -> None:
    xs = list(range(1, 9))
    t = 4  # h = 8: corrects 2
    coefficients = [1, 2, 3, 4]
    ys = evaluate_polynomial(coefficients, xs)
    for i, delta in ((0, 5), (3, 9), (6, 11)):
        ys[i] = (ys[i] + delta) % PRIME
    decoded = berlekamp_welch(xs, ys, t)
    assert decoded != coefficients  # 3 errors: None, or a different codeword within distance 2


@pytest.mark.parametrize(("h", "t", "bad"), [(7, 3, 2), (6, 4, 1), (5, 4, 1), (12, 5, 3), (4, 4, 0)])
def test_robust_reconstruct_finds_the_secret_and_marks_the_bad_shares(h: int, t: int, bad: int) -> None:
    secret = os.urandom(32)
    xs = list(range(2, 2 + h))
    shares = share_secrets([secret], xs, t)[:, 0, :].copy()
    for i in range(bad):  # corrupt the first shares, the ones the fast path uses
        shares[i, i % 9] = (shares[i, i % 9] + 1 + i) % PRIME
    found = robust_reconstruct(xs, shares, t, _checker(secret))
    assert found is not None and found.secret == secret
    assert list(np.flatnonzero(~found.on_polynomial)) == list(range(bad))


def test_robust_reconstruct_refuses_when_no_candidate_passes() -> None:
    secret = os.urandom(32)
    xs = [1, 2, 3, 4, 5]
    shares = share_secrets([secret], xs, 4)[:, 0, :].copy()
    shares[0, 0] = (shares[0, 0] + 1) % PRIME
    shares[1, 3] = (shares[1, 3] + 7) % PRIME  # two errors, h = t + 1
    assert robust_reconstruct(xs, shares, 4, _checker(secret)) is None
    assert robust_reconstruct(xs[:3], shares[:3], 4, _checker(secret)) is None  # fewer than t


def test_key_checks_and_open_shares_checks_the_field() -> None:
    key = os.urandom(32)
    ctx = {"session": SESSION, "round_idx": 3}
    check = key_check(key)
    assert len(check) == 16 and check == key_check(bytes(key))
    assert check != key_check(os.urandom(32))
    with pytest.raises(ValueError, match="32 bytes"):
        key_check(key[:31])
    sealed = seal_shares(key, sender=1, receiver=2, b_share=b"\xff" * 36, sk_share=bytes(36), **ctx)
    with pytest.raises(ValueError, match="do not parse"):
        open_shares(key, sealed, sender=1, receiver=2, **ctx)
