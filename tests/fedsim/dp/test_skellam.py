"""The distributed Skellam mechanism: the ring sum is exactly the rounded inputs plus Skellam
noise, the rounded norm bound holds for adversarial inputs, honest sums do not wrap at the
chosen scale (and do above it), and the parameters refuse what the ring cannot hold."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from fedsim.dp import skellam as sk


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _norm_sq(r: np.ndarray) -> int:
    """Σ r_j² in Python integers: the test's own exact norm."""
    return sum(int(v) * int(v) for v in r.tolist())


def _ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        np.add(total, v, out=total)  # unsigned: wraps mod 2^b
    return total


def _unit(d: int, seed: int) -> torch.Tensor:
    v = torch.from_numpy(_rng(seed).standard_normal(d))
    return (v / torch.linalg.vector_norm(v)).to(torch.float32)


SEED = sk.rotation_seed(b"test session", 7)


# --- rotation --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 8, 32, 64, 128, 512])
def test_hadamard_transform_matches_scipy(n):
    x = _rng(n).standard_normal(n)
    np.testing.assert_allclose(sk.hadamard_transform(x), scipy.linalg.hadamard(n) @ x, rtol=1e-12, atol=1e-12)


def test_hadamard_transform_refuses_other_lengths():
    with pytest.raises(ValueError, match="power-of-two length"):
        sk.hadamard_transform(np.ones(12))


def test_rotation_is_orthonormal_and_inverted_exactly_up_to_float_error():
    n = 1 << 13
    x = _rng(1).standard_normal(n)
    signs = sk.rotation_signs(SEED, n)
    y = sk.rotate(x, signs)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-13)
    assert np.max(np.abs(sk.unrotate(y, signs) - x)) < 1e-12 * np.linalg.norm(x)
    assert np.max(np.abs(y - x)) > 0.1  # it did rotate


def test_rotation_signs_are_public_per_exchange_and_balanced():
    n = 1 << 14
    signs = sk.rotation_signs(SEED, n)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(signs.mean()) < 5 / math.sqrt(n)
    np.testing.assert_array_equal(signs, sk.rotation_signs(sk.rotation_seed(b"test session", 7), n))
    assert not np.array_equal(signs, sk.rotation_signs(sk.rotation_seed(b"test session", 8), n))
    assert not np.array_equal(signs, sk.rotation_signs(sk.rotation_seed(b"other session", 7), n))
    with pytest.raises(ValueError, match="session must be non-empty bytes"):
        sk.rotation_seed(b"", 1)
    with pytest.raises(ValueError, match="exchange=-1"):
        sk.rotation_seed(b"s", -1)
    with pytest.raises(ValueError, match="rotation_seed must be 32 bytes"):
        sk.rotation_signs(b"short", n)


# --- exact sums, decoding -------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
def test_ring_sum_is_exactly_the_rounded_inputs_plus_the_noise(bits):
    """3 of 4 planned clients survive: the centred ring sum equals Σ rounded + Σ noise, both
    rebuilt from the pure pieces with the same coins, and decodes to their rotation back / γ."""
    d, m = 3000, 4
    codec = sk.SkellamCodec(sk.skellam_params(d, 1.0, 1.0, m, bits))
    p = codec.params
    updates = [_unit(d, i) * (0.5 + 0.25 * i) for i in range(3)]  # the last one is clipped
    shares = [codec.encode(u, SEED, _rng(100 + i)) for i, u in enumerate(updates)]
    expected = np.zeros(p.padded_dim, dtype=np.int64)
    for i, u in enumerate(updates):
        coins = _rng(100 + i)
        rounded = codec.rounded_input(u, SEED, coins)
        assert _norm_sq(rounded) <= Fraction(p.l2_sensitivity) ** 2
        expected += rounded + sk.skellam_noise(p.padded_dim, p.mu / m, coins)
    ring_sum = _ring_sum(shares)
    assert ring_sum.dtype == (np.uint32 if bits == 32 else np.uint64)
    np.testing.assert_array_equal(sk.centred(ring_sum, bits), expected)
    decoded = codec.decode_sum(ring_sum, 3, SEED)
    assert decoded.dtype == torch.float32 and decoded.shape == (d,)
    signs = sk.rotation_signs(SEED, p.padded_dim)
    reference = sk.unrotate(expected.astype(np.float64), signs)[:d] / p.gamma
    np.testing.assert_allclose(decoded.numpy(), reference, rtol=1e-6, atol=1e-6)
    assert codec.out_of_range(ring_sum, 3) == 0


def test_decoding_recovers_the_sum_within_the_noise_and_the_rounding():
    d, m, s = 4096, 4, 3
    for z, check in ((0.5, "variance"), (1e-3, "max")):
        codec = sk.SkellamCodec(sk.skellam_params(d, 1.0, z, m))
        updates = [_unit(d, 10 + i) * 0.8 for i in range(s)]
        updates[0] = updates[0] * 10  # norm 8: clipped to S = 1
        clipped = [updates[0] / 8, *updates[1:]]
        shares = [codec.encode(u, SEED, _rng(200 + i)) for i, u in enumerate(updates)]
        error = (codec.decode_sum(_ring_sum(shares), s, SEED) - sum(clipped)).double()
        noise_var = z**2 * s / m  # (zS)²·s/m in the update's units; rounding adds <= s/(4γ²)
        if check == "variance":  # 4096 coordinates: the sample variance is within ~2.2% (1 sd)
            assert float(error.pow(2).mean()) == pytest.approx(noise_var, rel=0.1)
        else:
            assert float(error.abs().max()) < 6 * math.sqrt(noise_var) + 1e-5
        mean_error = float((error / s).abs().mean())
        assert mean_error < 2 * math.sqrt(noise_var) / s


# --- noise -----------------------------------------------------------------------------------


def _chi2_pvalue(samples: np.ndarray, mu: float) -> float:
    """χ² of the integer samples against Sk(mu) (scipy's Skellam(mu, mu)), bins of >= 20 expected."""
    n = samples.size
    lo, hi = int(samples.min()) - 1, int(samples.max()) + 1
    k = np.arange(lo, hi + 1)
    expected = scipy.stats.skellam.pmf(k, mu, mu) * n
    expected[0] += scipy.stats.skellam.cdf(lo - 1, mu, mu) * n
    expected[-1] += scipy.stats.skellam.sf(hi, mu, mu) * n
    observed = np.bincount(samples - lo, minlength=k.size).astype(float)
    obs_bins, exp_bins, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            obs_bins.append(acc_o)
            exp_bins.append(acc_e)
            acc_o = acc_e = 0.0
    obs_bins[-1] += acc_o
    exp_bins[-1] += acc_e
    exp_bins = np.array(exp_bins) * (n / sum(exp_bins))
    return float(scipy.stats.chisquare(obs_bins, exp_bins).pvalue)


@pytest.mark.parametrize("realized", [3.0, 1500.0])
def test_summed_noise_of_survivors_is_skellam_of_their_share(realized):
    """Zero updates round to 0, so the centred sum of 3 of 4 shares is their noise alone:
    χ² against Sk(3μ/4) accepts, against Sk(μ) (all 4 shares) rejects."""
    d, m, s = 1 << 14, 4, 3
    gamma = sk.skellam_params(d, 1.0, 1e-9, m).gamma  # the cap: noise plays no part in γ here
    z = math.sqrt(2 * realized * m / s) / gamma
    params = sk.skellam_params(d, 1.0, z, m)
    assert params.gamma == gamma and params.realized_mu(s) == pytest.approx(realized)
    codec = sk.SkellamCodec(params)
    shares = [codec.encode(torch.zeros(d), SEED, _rng(300 + i)) for i in range(s)]
    noise = sk.centred(_ring_sum(shares), 32)
    assert _chi2_pvalue(noise, params.realized_mu(s)) > 1e-3
    assert _chi2_pvalue(noise, params.mu) < 1e-6
    assert noise.var() == pytest.approx(2 * params.realized_mu(s), rel=0.05)


# --- the rounded norm bound under attack ---------------------------------------------------


def _attack_inputs(d: int) -> dict[str, torch.Tensor]:
    one_hot = torch.zeros(d)
    one_hot[0] = 1.0
    return {
        "all mass on one coordinate": one_hot,
        "one coordinate, huge": one_hot * 1e30,
        "all coordinates equal, at the clip": torch.full((d,), 1 / math.sqrt(d)),
        "all coordinates equal, huge": torch.full((d,), 3e37),
        "random, norm 1e300 (float64)": torch.from_numpy(_rng(5).standard_normal(d) * 1e300),
        "tiny (subnormal)": torch.full((d,), 1e-310, dtype=torch.float64),
        "zero": torch.zeros(d),
    }


@pytest.mark.parametrize("d", [1, 1000, 4096])
def test_rounded_norm_never_exceeds_the_l2_sensitivity_for_adversarial_inputs(d):
    codec = sk.SkellamCodec(sk.skellam_params(d, 1.0, 1.0, 4))
    bound_sq = Fraction(codec.params.l2_sensitivity) ** 2
    for name, update in _attack_inputs(d).items():
        for trial in range(3):
            rounded = codec.rounded_input(update, SEED, _rng(trial))
            assert rounded.dtype == np.int64 and rounded.shape == (codec.params.padded_dim,)
            assert _norm_sq(rounded) <= bound_sq, name


def test_conditional_rounding_keeps_the_bound_with_half_fractions_everywhere():
    """Every fractional part 0.5 at norm c maximises the rounding's spread: attempts fail often,
    yet every output is within Δ2; with the bound at the norm of y rounded toward zero (which
    only that rounding meets) it falls back to it, and below that it refuses to answer."""
    n, c = 4096, 5000.0
    y = np.full(n, math.floor(c / math.sqrt(n)) + 0.5)
    y *= np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    delta2 = sk.rounded_l2_bound(float(np.linalg.norm(y)), n, sk.DEFAULT_BETA)
    for trial in range(20):
        r = sk.conditional_round(y, delta2, _rng(trial))
        assert _norm_sq(r) <= Fraction(delta2) ** 2
        assert np.all(np.abs(r - y) == 0.5)
    tight = float(np.linalg.norm(np.trunc(y)))
    r = sk.conditional_round(y, tight, _rng(0))
    np.testing.assert_array_equal(r, np.trunc(y).astype(np.int64))
    with pytest.raises(RuntimeError, match="fits the bound"):
        sk.conditional_round(y, tight - 1, _rng(0))


def test_the_codec_rejects_bad_inputs_by_name():
    codec = sk.SkellamCodec(sk.skellam_params(16, 1.0, 1.0, 4))
    bad = torch.zeros(16)
    for value in (float("nan"), float("inf"), -float("inf")):
        bad[3] = value
        with pytest.raises(ValueError, match="update must contain only finite values"):
            codec.encode(bad, SEED, _rng(0))
    with pytest.raises(ValueError, match="update must have 16 values"):
        codec.encode(torch.zeros(17), SEED, _rng(0))
    with pytest.raises(ValueError, match="update must be a floating-point"):
        codec.encode(torch.zeros(16, dtype=torch.int64), SEED, _rng(0))
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        codec.encode(torch.zeros(16), SEED, np.random.RandomState(0))
    with pytest.raises(ValueError, match="ring_sum must be a numpy array of dtype uint32"):
        codec.decode_sum(np.zeros(16, dtype=np.int64), 1, SEED)
    with pytest.raises(ValueError, match=r"ring_sum must have shape \(16,\)"):
        codec.decode_sum(np.zeros(8, dtype=np.uint32), 1, SEED)
    with pytest.raises(ValueError, match="survivors=0"):
        codec.out_of_range(np.zeros(16, dtype=np.uint32), 0)


# --- wrap-around and the range check -------------------------------------------------------


@pytest.mark.parametrize("z", [1.0, 0.01])
def test_an_honest_full_cohort_of_worst_case_inputs_never_wraps(z):
    """4 clients send the same update of norm S (the largest sum), for 2 directions over
    2 × 4096 coordinates: every coordinate decodes exactly and stays within B(m)."""
    d, m = 4096, 4
    codec = sk.SkellamCodec(sk.skellam_params(d, 1.0, z, m))
    one_hot = torch.zeros(d)
    one_hot[17] = 1.0
    for direction in (_unit(d, 42), one_hot):
        expected = np.zeros(d, dtype=np.int64)
        shares = []
        for i in range(m):
            coins = _rng(400 + i)
            rounded = codec.rounded_input(direction, SEED, coins) + sk.skellam_noise(d, codec.params.mu / m, coins)
            expected += rounded
            shares.append(sk.to_ring(rounded, 32))
        ring_sum = _ring_sum(shares)
        np.testing.assert_array_equal(sk.centred(ring_sum, 32), expected)
        assert np.max(np.abs(expected)) <= codec.params.honest_bound(m)
        assert codec.out_of_range(ring_sum, m) == 0


def test_a_scale_forced_above_the_bound_wraps():
    """128 clients align their updates with the first rotated axis (the worst case for any
    signs: every client puts γS on one coordinate). At the chosen γ the sum still fits, as the
    bound covers m·γS when d' is small; at γ forced to the codec's cap it wraps."""
    d, m = 16, 128
    chosen = sk.skellam_params(d, 1.0, 1.0, m)
    forced_gamma = 0.75 * sk.MAX_SCALED_CLIP
    forced = dataclasses.replace(
        chosen,
        gamma=forced_gamma,
        mu=(forced_gamma * 1.0) ** 2 / 2 / 1e6,  # little noise: the signal alone must wrap
        l2_sensitivity=sk.rounded_l2_bound(forced_gamma, d, chosen.beta),
    )
    signs = sk.rotation_signs(SEED, d)
    axis = np.zeros(d)
    axis[0] = 1.0
    aligned = torch.from_numpy(sk.unrotate(axis, signs))  # rotates to e_0
    wrapped = {}
    for name, params in (("chosen", chosen), ("forced", forced)):
        codec = sk.SkellamCodec(params)
        expected = np.zeros(d, dtype=np.int64)
        shares = []
        for i in range(m):
            coins = _rng(500 + i)
            integer = codec.rounded_input(aligned, SEED, coins) + sk.skellam_noise(d, params.mu / m, coins)
            expected += integer
            shares.append(sk.to_ring(integer, 32))
        wrapped[name] = int(np.count_nonzero(sk.centred(_ring_sum(shares), 32) != expected))
    assert wrapped == {"chosen": 0, "forced": 1}


def test_the_range_check_flags_a_value_no_honest_cohort_produces():
    d, m = 1024, 4
    codec = sk.SkellamCodec(sk.skellam_params(d, 1.0, 1.0, m))
    shares = [codec.encode(_unit(d, i), SEED, _rng(600 + i)) for i in range(m)]
    honest = _ring_sum(shares)
    assert codec.out_of_range(honest, m) == 0
    shift = np.zeros_like(honest)
    shift[5] = 1 << 30  # an attacker's ring value in the guard band
    shift[9] = 2**32 - 2 * int(codec.params.honest_bound(m))  # -2·B(m) mod 2^32
    attacked = honest + shift  # wraps mod 2^32
    assert codec.out_of_range(attacked, m) == 2
    assert codec.params.honest_bound(3) < codec.params.honest_bound(m) <= 2.0**23


# --- parameters ------------------------------------------------------------------------------


def test_params_at_the_defaults_are_as_stated():
    p = sk.skellam_params(100_000, 1.0, 1.0, 4)
    assert p.padded_dim == 131072 and p.modulus_bits == 32 and p.max_parties == 4
    c = p.gamma * p.clip
    k = math.sqrt(2 * math.log(1 / p.beta))
    assert p.l2_sensitivity == pytest.approx(math.sqrt(c * c + p.padded_dim / 4 + k * (c + math.sqrt(p.padded_dim) / 2)))
    assert p.l1_sensitivity == pytest.approx(min(p.l2_sensitivity**2, math.sqrt(p.padded_dim) * p.l2_sensitivity))
    assert p.mu == pytest.approx((p.gamma * p.noise_multiplier * p.clip) ** 2 / 2)
    assert p.realized_mu(3) == pytest.approx(0.75 * p.mu) and p.realized_mu(0) == 0
    assert 2**p.guard_bits * p.honest_bound(4) <= 2**31 - 1 < 2**p.guard_bits * sk.skellam_params(
        100_000, 1.0, 1.0, 4, beta=p.beta
    ).honest_bound(5)
    assert 1 < p.rounding_inflation < 1 + 1e-5
    assert p.log10_wrap_bound() < -1000 and p.wrap_probability == sk.DEFAULT_MAX_WRAP_PROBABILITY
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.gamma = 2.0  # type: ignore[misc]
    wide = sk.skellam_params(100_000, 1.0, 1.0, 4, 64)
    assert wide.gamma > p.gamma and wide.rounding_inflation < p.rounding_inflation


def test_rounded_l2_bound_takes_the_smaller_of_the_two_bounds():
    assert sk.rounded_l2_bound(0.0, 1, 1e-300) == pytest.approx(1.0)  # (c + √n)² wins at tiny β
    assert sk.rounded_l2_bound(10.0, 4, math.exp(-0.5)) == pytest.approx(math.sqrt(100 + 1 + 10 + 1))


def test_tail_bounds_are_sound_and_close():
    p = 1e-12
    for mu in (0.5, 50.0, 1e6):
        exact = scipy.stats.skellam.isf(p / 2, mu, mu)  # P(|N| > exact) <= p
        chernoff = sk.tail_quantile(0.0, mu, p)
        assert exact <= chernoff <= 1.6 * exact + 5
        assert sk.tail_log_bound(chernoff, 0.0, mu) == pytest.approx(math.log(p), abs=1e-6)
    sigma2 = 1e6
    assert sk.tail_quantile(sigma2, 0.0, p) == pytest.approx(math.sqrt(2 * sigma2 * math.log(2 / p)))  # Hoeffding
    assert sk.tail_quantile(sigma2, 1e5, p) > sk.tail_quantile(sigma2, 0.0, p)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"modulus_bits": 16}, "modulus_bits=16"),
        ({"dim": 0}, "dim=0"),
        ({"dim": 2**24 + 1}, "dim=16777217"),
        ({"clip": 0.0}, "clip=0.0"),
        ({"clip": float("nan")}, "clip=nan"),
        ({"noise_multiplier": -1.0}, "noise_multiplier=-1.0"),
        ({"noise_multiplier": float("inf")}, "noise_multiplier=inf"),
        ({"planned": 0}, "planned=0"),
        ({"beta": 1.0}, "beta=1.0"),
        ({"max_wrap_probability": 0.0}, "max_wrap_probability=0.0"),
        ({"guard_bits": 17}, "guard_bits=17"),
        ({"max_parties": 3}, "max_parties=3"),
        ({"planned": 2**22}, "planned=4194304"),
        ({"noise_multiplier": 1e4, "dim": 2**20}, "noise_multiplier=10000.0"),
    ],
)
def test_skellam_params_refuses_impossible_settings_naming_the_field(kwargs, field):
    args = {"dim": 1000, "clip": 1.0, "noise_multiplier": 1.0, "planned": 4, "modulus_bits": 32} | kwargs
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        sk.skellam_params(args.pop("dim"), args.pop("clip"), args.pop("noise_multiplier"), args.pop("planned"), **args)


def test_a_wider_ring_admits_what_the_32_bit_ring_refuses():
    with pytest.raises(ValueError, match="modulus_bits=32.*use modulus_bits=64"):
        sk.skellam_params(2**20, 1.0, 1e4, 4)
    assert sk.skellam_params(2**20, 1.0, 1e4, 4, 64).rounding_inflation < 1.01
