"""secagg building blocks: Shamir sharing, Lagrange cache, neighbour graphs, protocol
parameters, wire format, share encryption; no insecure randomness in the source.

Codecs (both rings, weighted means), the keystream and masks: test_secagg.py; the choice
and check of (threshold, neighbours): test_params.py."""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.agreement import generate_private_key, public_key_bytes, share_encryption_keys
from secagg.channel import CIPHERTEXT_BYTES, open_shares, seal_shares
from secagg.graph import NeighbourGraph, random_permutation
from secagg.messages import HEADER, REPLY, ProtocolError, Reader, open_message, pack_message
from secagg.stages import SHARE_KEYS
from secagg.params import ProtocolParams
from secagg.shamir import (
    PRIME,
    LagrangeCache,
    evaluation_points,
    join_limbs,
    lagrange_at_zero,
    random_field_elements,
    reconstruct,
    share_from_bytes,
    share_secrets,
    share_to_bytes,
    split_limbs,
)
from tests.support import REPO_ROOT

SESSION = bytes(range(16))


# --- Shamir -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 30),
    data=st.data(),
)
def test_any_t_shares_reconstruct_and_t_minus_one_do_not(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, PRIME - 1), min_size=n, max_size=n, unique=True))
    shares = share_secrets([secret, secret[::-1]], xs, t)
    assert shares.shape == (n, 2, 9) and shares.max() < PRIME
    chosen = data.draw(st.lists(st.integers(0, n - 1), min_size=t, max_size=n, unique=True))
    limbs = reconstruct(shares[chosen], lagrange_at_zero([xs[i] for i in chosen]))
    assert join_limbs(limbs[0]) == secret and join_limbs(limbs[1]) == secret[::-1]
    if t > 1:
        fewer = chosen[: t - 1]
        wrong = reconstruct(shares[fewer], lagrange_at_zero([xs[i] for i in fewer]))[0]
        assert not np.array_equal(wrong, split_limbs(secret))  # fails with probability p^-9


def test_t_minus_one_shares_are_consistent_with_every_secret() -> None:
    """Perfect secrecy, made concrete: for t-1 shares and ANY candidate secret there is a
    degree t-1 polynomial through both, so the shares cannot rule any candidate out."""
    xs, t = [3, 8, 11, 20], 4
    shares = share_secrets([os.urandom(32)], xs, t)[:, 0, 0]  # first limb
    for candidate in (0, 1, 12345, PRIME - 1):
        points = [(0, candidate)] + list(zip(xs[: t - 1], (int(s) for s in shares[: t - 1])))
        for x, y in points:  # the interpolating polynomial exists and passes through all of them
            value = sum(
                Fraction(yj) * math.prod(Fraction(x - xk, xj - xk) for xk, _ in points if xk != xj)
                for xj, yj in points
            )
            assert value == y


def test_lagrange_matches_exact_rational_interpolation_and_is_cached() -> None:
    xs = [1, 5, 9, 13, 200, 77]
    coefficients = lagrange_at_zero(xs)
    for i, x_i in enumerate(xs):
        exact = math.prod(Fraction(x_j, x_j - x_i) for x_j in xs if x_j != x_i)
        assert int(coefficients[i]) == exact.numerator * pow(exact.denominator, -1, PRIME) % PRIME
    cache = LagrangeCache()
    first = cache.coefficients(xs)
    assert cache.coefficients(list(xs)) is first and cache.misses == 1
    assert not np.array_equal(cache.coefficients(xs[::-1]), first) and cache.misses == 2


def test_share_encoding_and_validation() -> None:
    share = share_secrets([os.urandom(32)], [1, 2], 2)[0, 0]
    assert np.array_equal(share_from_bytes(share_to_bytes(share)), share)
    with pytest.raises(ValueError, match="36 bytes"):
        share_from_bytes(bytes(35))
    with pytest.raises(ValueError, match="< p"):
        share_from_bytes(b"\xff" * 36)
    with pytest.raises(ValueError, match="distinct"):
        share_secrets([bytes(32)], [1, 1], 1)
    with pytest.raises(ValueError, match="threshold"):
        share_secrets([bytes(32)], [1, 2], 3)
    with pytest.raises(ValueError, match="inconsistent"):
        join_limbs(np.full(9, 2**30, dtype=np.uint64))
    assert evaluation_points((3, 7, 100), (100, 3)) == [3, 1]
    with pytest.raises(ValueError, match="not in the sorted cohort"):
        evaluation_points((3, 7, 100), (4,))


def test_field_elements_are_uniform_below_p() -> None:
    draws = random_field_elements((20000,))
    assert draws.max() < PRIME
    top = np.bincount((draws >> np.uint64(27)).astype(np.int64), minlength=16)  # 16 buckets
    assert np.all(np.abs(top - 1250) < 6 * math.sqrt(1250))


# --- neighbour graph ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(5, 2), (10, 4), (101, 10), (40, 38), (9, 8)])
def test_harary_graph_is_k_regular_symmetric_and_shared(n: int, k: int) -> None:
    ids = tuple(range(10, 10 + 3 * n, 3))
    graph = NeighbourGraph(SESSION, 4, ids, k)
    for u in ids:
        neighbours = graph.neighbours(u)
        assert len(neighbours) == k and u not in neighbours
        assert all(u in graph.neighbours(v) for v in neighbours)
        assert graph.closed_neighbourhood(u) == tuple(sorted(neighbours + (u,)))
    again = NeighbourGraph(SESSION, 4, ids, k)
    assert all(again.neighbours(u) == graph.neighbours(u) for u in ids)  # every party recomputes it
    if k < n - 1:
        other = NeighbourGraph(bytes(16), 4, ids, k)
        assert other.ring_order() != graph.ring_order()


def test_complete_graph_and_validation() -> None:
    graph = NeighbourGraph(SESSION, 1, (1, 2, 3, 4), None)
    assert graph.complete and graph.neighbours(2) == (1, 3, 4)
    for bad in (3, 0, 4):
        with pytest.raises(ValueError, match="degree"):
            NeighbourGraph(SESSION, 1, (1, 2, 3, 4), bad)
    with pytest.raises(ValueError, match="not in the cohort"):
        graph.neighbours(9)


def test_permutation_is_uniform() -> None:
    counts: dict[tuple[int, ...], int] = {}
    trials = 2400
    for i in range(trials):
        perm = tuple(random_permutation(3, i.to_bytes(32, "big")))
        counts[perm] = counts.get(perm, 0) + 1
    assert len(counts) == 6
    chi2 = sum((c - trials / 6) ** 2 / (trials / 6) for c in counts.values())
    assert chi2 < 25.7  # chi-square(5) at p = 1e-4


# --- protocol parameters (their choice and check: test_params.py) ----------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"session": bytes(15)}, "session"),
        ({"round_idx": 0}, "round_idx"),
        ({"client_ids": (2, 1, 3)}, "sorted"),
        ({"client_ids": [1, 2, 3]}, "client_ids"),
        ({"client_ids": (0, 1, 2)}, r"client_ids\[0\]"),
        ({"dim": 0}, "dim"),
        ({"threshold": 4}, "threshold"),
        ({"modulus_bits": 16}, "modulus_bits"),
        ({"neighbours": 1}, "neighbours"),
        ({"consistency_check": 1}, "consistency_check"),
    ],
)
def test_protocol_params_validate(change: dict, field: str) -> None:
    fields = {"session": SESSION, "round_idx": 1, "client_ids": (1, 2, 3), "dim": 4, "threshold": 2}
    with pytest.raises(ValueError, match=field):
        ProtocolParams(**{**fields, **change})


# --- wire format and share encryption ----------------------------------------------------


def test_protocol_error_names_sender_stage_and_reason() -> None:
    error = ProtocolError(7, SHARE_KEYS, "bad thing", receiver=0)
    assert (error.sender, error.stage, error.reason) == (7, SHARE_KEYS, "bad thing")
    assert str(error) == "ShareKeys message from client 7 rejected by server: bad thing"


def test_open_message_checks_every_header_field() -> None:
    good = pack_message(SHARE_KEYS, REPLY, SESSION, 3, 5, 0, b"body")
    ctx = {
        "stage": SHARE_KEYS,
        "direction": REPLY,
        "session": SESSION,
        "round_idx": 3,
        "sender": 5,
        "receiver": 0,
    }
    assert bytes(open_message(good, **ctx)) == b"body"
    for offset, reason in [
        (0, "magic"),
        (4, "version"),
        (6, "direction"),
        (8, "session"),
        (24 + 7, "round"),
        (5, "stage"),
        (32 + 7, "sender"),
        (40 + 7, "receiver"),
        (48 + 3, "length"),
    ]:
        bad = bytearray(good)
        bad[offset] ^= 1
        with pytest.raises(ProtocolError, match=reason):
            open_message(bytes(bad), **ctx)
    reader = Reader(memoryview(b"\x00\x00\x00\x09"), sender=5, stage=SHARE_KEYS, receiver=0)
    with pytest.raises(ProtocolError, match="at most 2"):
        reader.take_list(HEADER, 2)


def test_share_ciphertexts_bind_session_round_and_parties() -> None:
    a, b = generate_private_key(), generate_private_key()
    ctx = {"session": SESSION, "round_idx": 2}
    a_to_b, b_to_a = share_encryption_keys(a, public_key_bytes(b), own_id=1, peer_id=2, **ctx)
    assert share_encryption_keys(b, public_key_bytes(a), own_id=2, peer_id=1, **ctx) == (b_to_a, a_to_b)
    assert a_to_b != b_to_a  # one key per direction
    ct = seal_shares(a_to_b, sender=1, receiver=2, b_share=bytes(36), sk_share=b"\x01" * 36, **ctx)
    assert len(ct) == CIPHERTEXT_BYTES
    assert open_shares(a_to_b, ct, sender=1, receiver=2, **ctx) == (bytes(36), b"\x01" * 36)
    for change in ({"round_idx": 3}, {"session": bytes(16)}, {"sender": 3}):
        with pytest.raises(ValueError, match="authentication failed"):
            open_shares(a_to_b, ct, **{"sender": 1, "receiver": 2, **ctx, **change})
    for bit in (0, 8 * 50, 8 * len(ct) - 1):
        flipped = bytearray(ct)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ValueError, match="authentication failed"):
            open_shares(a_to_b, bytes(flipped), sender=1, receiver=2, **ctx)


# --- the source ----------------------------------------------------------------------------


def test_no_non_cryptographic_randomness_for_secrets() -> None:
    """Secrets come from os.urandom / cryptography only.  The one torch generator is the
    stochastic-rounding coin key of the codec (not a secret)."""
    for source in (REPO_ROOT / "secagg").glob("*.py"):
        code = "\n".join(
            line for line in source.read_text().splitlines() if not line.strip().startswith(("#", '"', "``"))
        )
        assert not re.search(
            r"np\.random|numpy\.random|^import random|from random|torch\.rand\(", code, re.M
        ), source
        if source.name != "encoding.py":
            assert "torch.randint" not in code, source
