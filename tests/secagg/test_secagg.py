"""Unit tests of the secagg library: encoding (32- and 64-bit rings, weighted means), ring
arithmetic, PRG, key agreement, masking (torch tensors and numpy arrays).

Shamir sharing, graphs, parameters, the wire format and share encryption:
test_secagg_primitives.py; the protocol: test_secagg_protocol.py."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import (
    FixedPointCodec,
    Keystream,
    WeightedMeanCodec,
    add_masks_,
    as_ring_array,
    fixed_point_frac_bits,
    generate_private_key,
    keystream_into,
    mask_input,
    mask_input_,
    mask_key_info,
    pairwise_mask_key,
    pairwise_mask_sign,
    public_key_bytes,
    unmask_sum,
    wrapping_add,
    wrapping_add_,
    wrapping_sub_,
    wrapping_sum,
)
from tests.support.stats import chi_square_critical

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ACROSS_CHUNKS = 2 * 64 * 1024 + 7  # longer than the library's chunks, not a multiple
SESSION = bytes(range(16))


def _reference_wrap(values: torch.Tensor) -> torch.Tensor:
    """Signed representative of int64 values mod 2^32, as int32 (the spec of the ring)."""
    return ((values + 2**31) % 2**32 - 2**31).to(torch.int32)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coins(seed: int = 0) -> bytes:
    """A fixed 32-byte rounding-coin key (tests only; fedsim draws one from its CSPRNG)."""
    return hashlib.sha256(b"coins" + seed.to_bytes(8, "little")).digest()


def _test_key(label: str, *parts: int) -> bytes:
    return hashlib.sha256(label.encode() + repr(parts).encode()).digest()


# --- fixed-point codec ---------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
def test_frac_bits_is_largest_scale_with_headroom(bits: int) -> None:
    limit = 2 ** (bits - 1) - 1
    for clip_range, n in [(1.0, 1), (1.0, 3), (0.1, 7), (3.7, 100), (1e-6, 2), (1.0, 1000)]:
        codec = FixedPointCodec(clip_range, n, modulus_bits=bits)
        f = codec.frac_bits
        assert n * math.ceil(clip_range * 2.0**f) <= limit
        assert f == 96 or n * math.ceil(clip_range * 2.0 ** (f + 1)) > limit
    (clip_range, n), f = {32: ((1.0, 3), 29), 64: ((1.0, 1000), 53)}[bits]
    assert FixedPointCodec(clip_range, n, modulus_bits=bits).frac_bits == f


def test_headroom_refusal_names_fields_and_limit() -> None:
    with pytest.raises(ValueError) as info:
        FixedPointCodec(clip_range=1e4, num_parties=1000)
    message = str(info.value)
    assert "clip_range=10000.0" in message and "num_parties=1000" in message
    assert "2147483647" in message and "2^8" in message
    assert fixed_point_frac_bits(1e4, 1000, 32) is None
    with pytest.raises(ValueError, match=r"2\^63 - 1 = 9223372036854775807"):
        FixedPointCodec(clip_range=2.0**60, num_parties=2**10, modulus_bits=64)
    assert fixed_point_frac_bits(2.0**60, 2**10, 64) is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip_range": 0.0, "num_parties": 2}, "clip_range"),
        ({"clip_range": -1.0, "num_parties": 2}, "clip_range"),
        ({"clip_range": float("nan"), "num_parties": 2}, "clip_range"),
        ({"clip_range": float("inf"), "num_parties": 2}, "clip_range"),
        ({"clip_range": 1.0, "num_parties": 0}, "num_parties"),
        ({"clip_range": 1.0, "num_parties": 2.0}, "num_parties"),
        ({"clip_range": 1.0, "num_parties": 2, "modulus_bits": 128}, "modulus_bits"),
        ({"clip_range": 1.0, "num_parties": 2, "modulus_bits": 16}, "modulus_bits"),
    ],
)
def test_codec_rejects_bad_parameters(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FixedPointCodec(**kwargs)


@pytest.mark.parametrize(("bits", "ring"), [(32, torch.int32), (64, torch.int64)])
def test_codec_round_trip_within_one_step(bits: int, ring: torch.dtype) -> None:
    codec = FixedPointCodec(clip_range=2.0, num_parties=4, modulus_bits=bits)
    assert codec.dtype == ring
    for real in (torch.float32, torch.float64):
        x = torch.randn(10_000, generator=_gen(1), dtype=real) * 3
        code = codec.encode(x, _coins(2))
        assert code.dtype == ring
        decoded = codec.decode_sum(code)
        assert decoded.dtype == torch.float32
        err = (decoded.double() - x.clamp(-2.0, 2.0).double()).abs()
        assert float(err.max()) <= 1.0 / codec.scale + 1e-7, real
        # the cohort's ring sum, decoded from the unsigned view the protocol returns
        codes = [codec.encode(x, _coins(10 + i)) for i in range(codec.num_parties)]
        total = codec.decode_sum(as_ring_array(wrapping_sum(codes)))
        expected = codec.num_parties * x.clamp(-2.0, 2.0).double()
        assert float((total.double() - expected).abs().max()) <= codec.num_parties / codec.scale + 1e-6, real


def test_encode_depends_only_on_coin_key_across_chunks() -> None:
    codec = FixedPointCodec(clip_range=1.0, num_parties=2)
    x = torch.randn(ACROSS_CHUNKS, generator=_gen(3)) * 0.3
    first = codec.encode(x, _coins(11))
    assert torch.equal(first, codec.encode(x, _coins(11)))
    assert not torch.equal(first, codec.encode(x, _coins(12)))
    err = (codec.decode_sum(first) - x.clamp(-1.0, 1.0)).abs()
    assert float(err.max()) <= 1.0 / codec.scale + 1e-7
    assert codec.encode(x.reshape(3, -1), _coins(11)).reshape(-1).equal(first)


def test_codec_exact_on_grid_points_and_float64() -> None:
    codec = FixedPointCodec(clip_range=1.0, num_parties=3)
    grid = torch.tensor([0.0, 0.5, -0.25, 1.0, -1.0, 3 * 2.0**-29], dtype=torch.float64)
    code = codec.encode(grid, _coins())
    assert code.tolist() == [int(v * 2**29) for v in grid.tolist()]
    assert torch.equal(codec.decode_sum(code), grid.to(torch.float32))


def test_codec_rejects_non_finite_and_non_float() -> None:
    codec = FixedPointCodec(1.0, 2)
    with pytest.raises(ValueError, match="finite"):
        codec.encode(torch.tensor([0.0, float("nan")]), _coins())
    with pytest.raises(ValueError, match="floating-point"):
        codec.encode(torch.tensor([1, 2]), _coins())
    with pytest.raises(ValueError, match="int32"):
        codec.decode_sum(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="coin_key must be 32 bytes"):
        codec.encode(torch.zeros(3), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coin_key must be exactly 32 bytes, got 31"):
        codec.encode(torch.zeros(3), bytes(31))


def test_stochastic_rounding_is_unbiased() -> None:
    codec = FixedPointCodec(clip_range=1.0, num_parties=3)
    step = 1.0 / codec.scale
    for frac in (0.3, 0.75, 0.01):
        value = (12345 + frac) * step
        codes = codec.encode(torch.full((200_000,), value, dtype=torch.float64), _coins(7))
        assert set(codes.unique().tolist()) == {12345, 12346}
        mean = float(codes.to(torch.float64).mean())
        sigma = math.sqrt(frac * (1 - frac) / codes.numel())
        assert abs(mean - (12345 + frac)) < 6 * sigma


def test_worst_case_cohort_sum_does_not_wrap() -> None:
    # float32(0.1) > 0.1: clipping must still keep every code within max_abs_code
    n = 7
    codec = FixedPointCodec(clip_range=0.1, num_parties=n)
    for sign in (1.0, -1.0):
        codes = [codec.encode(torch.full((64,), sign * 5.0), _coins(i)) for i in range(n)]
        assert all(int(c.abs().max()) <= codec.max_abs_code for c in codes)
        total = codec.decode_sum(wrapping_sum(codes))
        assert torch.all(total * sign > 0)
        assert torch.allclose(total, torch.full((64,), sign * n * 0.1), atol=n / codec.scale)


def test_weighted_mean_codec_validates() -> None:
    with pytest.raises(ValueError, match="sum of weights cannot wrap"):
        WeightedMeanCodec(clip_range=1e-9, max_weight=2**30, num_parties=4)
    codec = WeightedMeanCodec(clip_range=1.0, max_weight=10, num_parties=3)
    with pytest.raises(ValueError, match="weight must be an int in \\[0, 10\\]"):
        codec.encode(torch.zeros(2), 11, _coins())
    with pytest.raises(ValueError, match="total weight"):
        codec.decode_mean(np.zeros(3, np.uint32))


# --- ring arithmetic -----------------------------------------------------------------


def test_wrapping_add_and_sub_overflow_cases() -> None:
    a = torch.tensor([INT32_MAX, INT32_MIN, -1, INT32_MAX, 0], dtype=torch.int32)
    b = torch.tensor([1, -1, 1, INT32_MAX, INT32_MIN], dtype=torch.int32)
    assert wrapping_add(a, b).tolist() == [INT32_MIN, INT32_MAX, 0, -2, INT32_MIN]
    assert a.tolist()[0] == INT32_MAX  # pure: inputs untouched
    acc = a.clone()
    wrapping_sub_(acc, b)
    expected = _reference_wrap(a.to(torch.int64) - b.to(torch.int64))
    assert torch.equal(acc, expected)
    wrapping_add_(acc, b)
    assert torch.equal(acc, a)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(INT32_MIN, INT32_MAX), min_size=5, max_size=5),
        min_size=1,
        max_size=8,
    )
)
def test_wrapping_sum_matches_int64_reference(rows: list[list[int]]) -> None:
    tensors = [torch.tensor(r, dtype=torch.int32) for r in rows]
    expected = _reference_wrap(torch.tensor(rows, dtype=torch.int64).sum(0))
    assert torch.equal(wrapping_sum(tensors), expected)


def test_wrapping_ops_validate() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        wrapping_sum([])
    with pytest.raises(ValueError, match="shape"):
        wrapping_add(torch.zeros(3, dtype=torch.int32), torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="dtype"):
        wrapping_add(torch.zeros(3, dtype=torch.int16), torch.zeros(3, dtype=torch.int16))
    with pytest.raises(ValueError, match="dtype"):
        wrapping_add(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int32))


# --- PRG -----------------------------------------------------------------------------


WORD_BUFFERS = {
    "torch.int32": lambda n: torch.empty(n, dtype=torch.int32),
    "torch.int64": lambda n: torch.empty(n, dtype=torch.int64),
    "numpy.uint32": lambda n: np.empty(n, np.uint32),
    "numpy.uint64": lambda n: np.empty(n, np.uint64),
}


def _little_endian_bytes(words: torch.Tensor | np.ndarray) -> bytes:
    array = words.numpy() if isinstance(words, torch.Tensor) else words
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("words", sorted(WORD_BUFFERS))
@pytest.mark.parametrize("n", [1, 3, 4, 5, 1000, 4099])
def test_keystream_is_aes_ctr_of_zeros(n: int, words: str) -> None:
    """keystream_into and Keystream.read_into write the AES-256-CTR keystream, read as
    little-endian words, into torch int32/int64 tensors and numpy uint32/uint64 arrays."""
    key, nonce = _test_key("k"), bytes(range(16))
    out = WORD_BUFFERS[words](n)
    keystream_into(out, key, nonce)
    read = WORD_BUFFERS[words](n)
    Keystream(key, nonce).read_into(read)
    word_bytes = out.element_size() if isinstance(out, torch.Tensor) else out.itemsize
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    expected = encryptor.update(bytes(word_bytes * n)) + encryptor.finalize()
    assert _little_endian_bytes(out) == expected
    assert _little_endian_bytes(read) == expected


def test_keystream_deterministic_and_key_nonce_separated() -> None:
    def stream(key: bytes, nonce: bytes) -> torch.Tensor:
        out = torch.empty(4096, dtype=torch.int32)
        keystream_into(out, key, nonce)
        return out

    k1, k2, nonce = _test_key("a"), _test_key("b"), bytes(16)
    assert torch.equal(stream(k1, nonce), stream(k1, nonce))
    assert (stream(k1, nonce) != stream(k2, nonce)).float().mean() > 0.99
    assert (stream(k1, nonce) != stream(k1, b"\x01" + bytes(15))).float().mean() > 0.99


def test_keystream_reads_continue_the_stream() -> None:
    key, nonce = _test_key("continue"), bytes(16)
    whole = torch.empty(ACROSS_CHUNKS, dtype=torch.int32)
    keystream_into(whole, key, nonce)
    stream, parts, start = Keystream(key, nonce), [], 0
    for size in (1, 3, 4, 8191, 9000, 40_000):  # odd sizes: partial AES blocks
        part = torch.empty(size, dtype=torch.int32)
        stream.read_into(part)
        parts.append(part)
        start += size
    rest = torch.empty(ACROSS_CHUNKS - start, dtype=torch.int32)
    stream.read_into(rest)
    assert torch.equal(torch.cat(parts + [rest]), whole)


def test_keystream_validates() -> None:
    out = torch.empty(8, dtype=torch.int32)
    with pytest.raises(ValueError, match="key must be exactly 32 bytes, got 31"):
        keystream_into(out, bytes(31), bytes(16))
    with pytest.raises(ValueError, match="nonce must be exactly 16 bytes, got 12"):
        keystream_into(out, bytes(32), bytes(12))
    with pytest.raises(ValueError, match="dtype"):
        keystream_into(torch.empty(8), bytes(32), bytes(16))
    with pytest.raises(ValueError, match="contiguous"):
        keystream_into(out[::2], bytes(32), bytes(16))
    with pytest.raises(ValueError, match="read-only"):
        keystream_into(np.frombuffer(bytes(16), np.uint32), bytes(32), bytes(16))


# --- key agreement -------------------------------------------------------------------


def test_both_parties_derive_the_same_pairwise_key() -> None:
    sk_u, sk_v = generate_private_key(), generate_private_key()
    pk_u, pk_v = public_key_bytes(sk_u), public_key_bytes(sk_v)
    ctx = {"round_idx": 3, "id_lo": 2, "id_hi": 5, "session": SESSION}
    k_uv = pairwise_mask_key(sk_u, pk_v, **ctx)
    assert k_uv == pairwise_mask_key(sk_v, pk_u, **ctx)
    assert len(k_uv) == 32
    for change in ({"round_idx": 4}, {"id_hi": 6}, {"session": bytes(16)}):
        assert pairwise_mask_key(sk_u, pk_v, **{**ctx, **change}) != k_uv


def test_key_agreement_validates() -> None:
    sk = generate_private_key()
    pk = public_key_bytes(generate_private_key())
    with pytest.raises(ValueError, match="canonical order"):
        pairwise_mask_key(sk, pk, round_idx=0, id_lo=5, id_hi=2, session=SESSION)
    with pytest.raises(ValueError, match="session"):
        pairwise_mask_key(sk, pk, round_idx=0, id_lo=1, id_hi=2, session=b"short")
    with pytest.raises(ValueError, match="round_idx"):
        mask_key_info(session=SESSION, round_idx=-1, id_lo=1, id_hi=2)
    with pytest.raises(ValueError, match="32 raw bytes"):
        pairwise_mask_key(sk, pk[:31], round_idx=0, id_lo=1, id_hi=2, session=SESSION)
    with pytest.raises(ValueError, match="not a usable X25519 key"):  # low-order point
        pairwise_mask_key(sk, bytes(32), round_idx=0, id_lo=1, id_hi=2, session=SESSION)
    with pytest.raises(ValueError, match="own public key"):
        pairwise_mask_key(sk, public_key_bytes(sk), round_idx=0, id_lo=1, id_hi=2,
                          session=SESSION)


# --- masking -------------------------------------------------------------------------


def _agreed_keys(ids: list[int], round_idx: int = 0) -> dict[int, dict[int, bytes]]:
    """Each party's {peer: s_uv}, from real X25519 key pairs."""
    private = {u: generate_private_key() for u in ids}
    public = {u: public_key_bytes(sk) for u, sk in private.items()}
    return {
        u: {
            v: pairwise_mask_key(private[u], public[v], round_idx=round_idx,
                                 id_lo=min(u, v), id_hi=max(u, v), session=SESSION)
            for v in ids
            if v != u
        }
        for u in ids
    }


def test_pairwise_masks_cancel_exactly() -> None:
    ids = [1, 2, 3, 4, 5]
    keys = _agreed_keys(ids)
    inputs = {u: torch.randint(INT32_MIN, INT32_MAX, (ACROSS_CHUNKS,), generator=_gen(u),
                               dtype=torch.int32) for u in ids}
    masked = {u: mask_input(inputs[u], u, keys[u]) for u in ids}
    for u in ids:
        assert (masked[u] != inputs[u]).float().mean() > 0.99
    assert torch.equal(unmask_sum(list(masked.values())), wrapping_sum(list(inputs.values())))
    # a missing party leaves its masks in: the sum is garbage (dropouts need recovery)
    partial = unmask_sum([masked[u] for u in ids[:-1]])
    assert not torch.equal(partial, wrapping_sum([inputs[u] for u in ids[:-1]]))


def test_mask_input_leaves_input_untouched_and_validates() -> None:
    x = torch.arange(10, dtype=torch.int32)
    y = mask_input(x, 1, {2: _test_key("k")})
    assert torch.equal(x, torch.arange(10, dtype=torch.int32))
    assert mask_input_(x, 1, {2: _test_key("k")}) is x and torch.equal(x, y)
    with pytest.raises(ValueError, match="contiguous"):
        mask_input_(torch.zeros(10, dtype=torch.int32)[::2], 1, {2: _test_key("k")})
    assert mask_input(torch.zeros(0, dtype=torch.int32), 1, {2: _test_key("k")}).numel() == 0
    with pytest.raises(ValueError, match="own_id"):
        mask_input(x, 1, {1: _test_key("k")})
    with pytest.raises(ValueError, match="int32"):
        mask_input(x.float(), 1, {2: _test_key("k")})
    assert pairwise_mask_sign(1, 2) == 1 and pairwise_mask_sign(2, 1) == -1


def test_masked_zero_input_looks_uniform() -> None:
    ids = [1, 2, 3]
    keys = {u: {v: _test_key("pair", min(u, v), max(u, v)) for v in ids if v != u} for u in ids}
    y = mask_input(torch.zeros(2**16, dtype=torch.int32), 2, keys[2])
    data = torch.from_numpy(y.numpy().view("u1").copy()).to(torch.int64)
    counts = torch.bincount(data, minlength=256).to(torch.float64)
    expected = data.numel() / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < chi_square_critical(255, z=4.75)  # p ~ 1e-6, deterministic keys
    bits = (y.to(torch.int64).unsqueeze(1) >> torch.arange(32)) & 1
    assert torch.all((bits.to(torch.float64).mean(0) - 0.5).abs() < 0.02)


@pytest.mark.parametrize("ring", [torch.int32, torch.int64])
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 6),
    dim=st.integers(1, 300),
    seed=st.integers(0, 2**32),
    extreme=st.sampled_from([None, "min", "max"]),
)
def test_unmask_sum_of_masked_inputs_is_wrapping_sum(
    ring: torch.dtype, n: int, dim: int, seed: int, extreme: str | None
) -> None:
    """Z_(2^32) and Z_(2^64): with every party present the pairwise masks cancel."""
    ids = list(range(1, n + 1))
    keys = {u: {v: _test_key(f"{seed}", min(u, v), max(u, v)) for v in ids if v != u}
            for u in ids}
    info = torch.iinfo(ring)
    rng = np.random.default_rng(seed)  # test data, not secrets
    inputs = [
        torch.full((dim,), getattr(info, extreme), dtype=ring)
        if extreme is not None
        else torch.from_numpy(rng.integers(info.min, info.max, dim, dtype=np.int64, endpoint=True)).to(ring)
        for _ in ids
    ]
    masked = [mask_input(x, u, keys[u]) for u, x in zip(ids, inputs)]
    assert all(y.dtype == ring for y in masked)
    assert torch.equal(unmask_sum(masked), wrapping_sum(inputs))
    modulus = 2**info.bits  # the ring sum, in exact integers
    exact = [sum(int(x[i]) for x in inputs) % modulus for i in range(dim)]
    assert [int(v) % modulus for v in unmask_sum(masked)] == exact


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_add_masks_matches_keystream_arithmetic(dtype: type) -> None:
    n = 70_001  # several chunks, odd tail
    keys = [os.urandom(32) for _ in range(3)]
    y = np.arange(n, dtype=dtype)
    add_masks_(y, [(1, keys[0]), (-1, keys[1]), (1, keys[2])])
    streams = []
    for key in keys:
        s = np.empty(n, dtype=dtype)
        keystream_into(s, key, bytes(16))
        streams.append(s)
    assert np.array_equal(y, np.arange(n, dtype=dtype) + streams[0] - streams[1] + streams[2])
    with pytest.raises(ValueError, match="flat uint32 or uint64"):
        add_masks_(np.zeros(4, np.int32), [])
    with pytest.raises(ValueError, match="sign"):
        add_masks_(np.zeros(4, dtype), [(2, keys[0])])


def test_secagg_stands_alone() -> None:
    """docs/architecture.md: secagg never imports fedsim, accounting, cli, nor uses torch.distributed."""
    from tests.support import REPO_ROOT
    from tests.support.isolation import loaded_modules_after_import

    assert loaded_modules_after_import("secagg", ("fedsim", "accounting", "cli")) == []
    for source in (REPO_ROOT / "secagg").glob("*.py"):
        assert "distributed" not in source.read_text(), source  # (torch itself imports it)
