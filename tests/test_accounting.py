"""Tests for the accounting package: mechanisms, PRV/RDP composition, ledger, budgets."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import gammaln, logsumexp
from scipy.stats import norm

import accounting
import accounting.ledger as ledger_module
import accounting.prv as prv_module
from accounting import (
    EpsilonBound,
    Ledger,
    LedgerError,
    LedgerRecord,
    PoissonSubsampledGaussian,
    client_epsilons,
    client_mechanisms,
    merge_mechanisms,
    prv_epsilon,
    rdp_epsilon,
    read_ledger,
)
from accounting.rdp import subsampled_gaussian_rdp

DELTA = 1e-5
EPS_ERROR = 0.01


def psg(sigma: float, q: float, steps: int) -> PoissonSubsampledGaussian:
    return PoissonSubsampledGaussian(noise_multiplier=sigma, sample_rate=q, steps=steps)


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Independent Balle & Wang (2018) Thm. 8 solve: delta(eps) = Phi(-eps/mu+mu/2) - e^eps Phi(-eps/mu-mu/2)."""

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 200.0, xtol=1e-13)


# ----------------------------------------------------------------------------- mechanisms


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"noise_multiplier": "1.0"}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": -0.1}, "sample_rate"),
        ({"steps": -1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
    ],
)
def test_mechanism_validation_names_field(kwargs: dict, field: str) -> None:
    params = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 10, **kwargs}
    with pytest.raises(ValueError, match=rf"PoissonSubsampledGaussian\.{field}"):
        PoissonSubsampledGaussian(**params)


def test_mechanism_value_semantics_and_dict_round_trip() -> None:
    m = PoissonSubsampledGaussian(noise_multiplier=np.float64(1.1), sample_rate=np.float32(0.5), steps=np.int64(7))
    assert type(m.noise_multiplier) is float and type(m.steps) is int
    assert PoissonSubsampledGaussian.name == "poisson_subsampled_gaussian"
    assert m.to_dict() == {"name": m.name, "noise_multiplier": 1.1, "sample_rate": 0.5, "steps": 7}
    assert PoissonSubsampledGaussian.from_dict(m.to_dict()) == m
    assert psg(1.0, 1.0, 0).steps == 0  # q = 1 and zero steps are allowed
    with pytest.raises(ValueError, match="name"):
        PoissonSubsampledGaussian.from_dict({**m.to_dict(), "name": "laplace"})
    with pytest.raises(ValueError, match="steps"):
        PoissonSubsampledGaussian.from_dict({k: v for k, v in m.to_dict().items() if k != "steps"})


def test_merge_mechanisms_sums_identical_and_drops_empty() -> None:
    merged = merge_mechanisms([psg(1, 0.1, 3), psg(2, 0.1, 4), psg(1, 0.1, 5), psg(3, 0.1, 0)])
    assert merged == (psg(1, 0.1, 8), psg(2, 0.1, 4))


# ----------------------------------------------------------------------------------- PRV


def test_zero_steps_is_zero_epsilon() -> None:
    for mechanisms in ([], [psg(1.0, 0.01, 0)]):
        bound = prv_epsilon(mechanisms, DELTA)
        assert (bound.lower, bound.estimate, bound.upper) == (0.0, 0.0, 0.0)
        assert bound.method == accounting.METHOD_NONE


def test_prv_epsilon_is_monotone() -> None:
    base = prv_epsilon([psg(1.0, 0.01, 300)], DELTA)
    more_steps = prv_epsilon([psg(1.0, 0.01, 1200)], DELTA)
    more_noise = prv_epsilon([psg(1.5, 0.01, 300)], DELTA)
    higher_rate = prv_epsilon([psg(1.0, 0.03, 300)], DELTA)
    assert {b.method for b in (base, more_steps, more_noise, higher_rate)} == {"prv"}
    # Separated by more than the certified bands, not just in the estimates.
    assert more_steps.lower > base.upper
    assert more_noise.upper < base.lower
    assert higher_rate.lower > base.upper
    for b in (base, more_steps, more_noise, higher_rate):
        assert b.lower <= b.estimate <= b.upper
        # upper = eps(delta - delta_error) + eps_error (Gopi et al. 2021, Thm. 5.5)
        assert EPS_ERROR <= b.upper - b.estimate <= 2 * EPS_ERROR


def test_prv_matches_exact_gaussian_composition_at_full_sampling() -> None:
    sigma, steps = 2.0, 10
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    bound = prv_epsilon([psg(sigma, 1.0, steps)], DELTA, EPS_ERROR)
    assert bound.method == "prv"
    assert bound.lower <= exact <= bound.upper
    assert bound.upper <= exact * 1.01 + EPS_ERROR
    # The library's own closed form agrees with the independent one.
    assert accounting.gaussian_epsilon(math.sqrt(steps) / sigma, DELTA) == pytest.approx(exact, rel=1e-9)


def test_heterogeneous_gaussians_compose_to_closed_form() -> None:
    history = [psg(2.0, 1.0, 4), psg(3.0, 1.0, 3), psg(5.0, 1.0, 3)]
    mu = math.sqrt(4 / 2.0**2 + 3 / 3.0**2 + 3 / 5.0**2)
    exact = exact_gaussian_epsilon(mu, DELTA)
    bound = prv_epsilon(history, DELTA)
    assert bound.method == "prv"
    assert bound.lower <= exact <= bound.upper
    assert bound.estimate == pytest.approx(exact, abs=1e-3)


def test_prv_is_tighter_than_rdp_at_dpsgd_settings() -> None:
    mechanisms = [psg(1.0, 0.01, 1000)]
    bound = prv_epsilon(mechanisms, DELTA)
    rdp = rdp_epsilon(mechanisms, DELTA)
    assert bound.method == "prv"
    assert bound.upper < rdp
    assert (rdp - bound.upper) / bound.upper > 0.05  # PAPERS.md: RDP 8-15% looser here


def test_merged_and_split_histories_agree() -> None:
    split = prv_epsilon([psg(1.0, 0.01, 100), psg(1.2, 0.01, 50), psg(1.0, 0.01, 100)], DELTA)
    merged = prv_epsilon([psg(1.0, 0.01, 200), psg(1.2, 0.01, 50)], DELTA)
    assert split == merged


# ------------------------------------------------------------------------------ fallbacks


def test_real_prv_failure_falls_back_to_rdp(caplog: pytest.LogCaptureFixture) -> None:
    mechanisms = [psg(0.3, 0.1, 1)]  # prv_accountant 0.2.0: "Discrete mean differs ..."
    with caplog.at_level(logging.WARNING, logger="accounting.prv"):
        bound = prv_epsilon(mechanisms, DELTA)
    assert bound.method == "rdp"
    assert bound.lower == bound.estimate == bound.upper == rdp_epsilon(mechanisms, DELTA)
    assert "Discrete mean" in caplog.text


class _Raising:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise self.exc


@pytest.mark.parametrize(
    "exc", [RuntimeError("Discrete mean differs from continuous mean significantly."), MemoryError()]
)
def test_forced_prv_failure_subsampled_gives_sound_rdp_bound(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    mechanisms = [psg(1.0, 0.01, 1000)]
    tight = prv_epsilon(mechanisms, DELTA)
    monkeypatch.setattr(prv_module, "PRVAccountant", _Raising(exc))
    bound = prv_epsilon(mechanisms, DELTA)
    assert bound.method == "rdp"
    assert bound.upper == rdp_epsilon(mechanisms, DELTA)
    assert bound.upper >= tight.upper


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("Cannot compute epsilon")])
def test_forced_prv_failure_full_sampling_gives_exact_gaussian(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    sigma, steps = 2.0, 10
    tight = prv_epsilon([psg(sigma, 1.0, steps)], DELTA)
    monkeypatch.setattr(prv_module, "PRVAccountant", _Raising(exc))
    bound = prv_epsilon([psg(sigma, 1.0, steps)], DELTA)
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    assert bound.method == "analytic_gaussian"
    assert exact <= bound.upper <= exact + 1e-9
    assert tight.lower <= bound.upper <= tight.upper


def test_grid_guard_falls_back_without_running_prv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prv_module, "PRVAccountant", _Raising(AssertionError("must not be called")))
    bound = prv_epsilon([psg(1.0, 0.01, 1000)], DELTA, max_grid_points=1000)
    assert bound.method == "rdp"


class _WrongAccountant:
    """Stands in for prv_accountant returning a band that contradicts the truth."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def compute_epsilon(self, delta: float, num_self_compositions: list[int]) -> tuple[float, float, float]:
        return (0.5, 0.51, 0.52)  # far below the exact value at q=1, far above RDP's at q<1 below


def test_contradictory_prv_band_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prv_module, "PRVAccountant", _WrongAccountant)
    full = prv_epsilon([psg(2.0, 1.0, 10)], DELTA)
    assert full.method == "analytic_gaussian"
    assert full.upper == pytest.approx(exact_gaussian_epsilon(math.sqrt(10) / 2.0, DELTA), abs=1e-9)
    # q < 1 and very private: RDP upper bound < 0.5, so a PRV lower bound of 0.5 is impossible.
    private = [psg(20.0, 0.01, 10)]
    assert rdp_epsilon(private, DELTA) < 0.5
    bound = prv_epsilon(private, DELTA)
    assert bound.method == "rdp"


# ------------------------------------------------------------------------------------ RDP


def _rdp_integer_order(sigma: float, q: float, alpha: int) -> float:
    """Independent Mironov-Talwar-Zhang (2019) binomial expansion for integer alpha."""
    k = np.arange(alpha + 1)
    log_binom = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    terms = log_binom + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
    return float(logsumexp(terms)) / (alpha - 1)


@pytest.mark.parametrize("sigma, q", [(1.0, 0.01), (0.7, 0.2), (3.0, 0.5)])
def test_rdp_of_subsampled_gaussian_matches_binomial_expansion(sigma: float, q: float) -> None:
    for alpha in (2, 5, 17, 64):
        assert subsampled_gaussian_rdp(sigma, q, alpha) == pytest.approx(_rdp_integer_order(sigma, q, alpha), rel=1e-9)
    assert subsampled_gaussian_rdp(sigma, 1.0, 3.5) == pytest.approx(3.5 / (2 * sigma**2))


# --------------------------------------------------------------------------------- ledger


def _history() -> list[list[LedgerRecord]]:
    """Three rounds; client 1 skips round 1; sigma and q change between rounds."""
    return [
        [LedgerRecord(0, 0, psg(1.1, 0.01, 50), DELTA), LedgerRecord(0, 1, psg(1.1, 0.01, 50), DELTA)],
        [LedgerRecord(1, 0, psg(1.0, 0.05, 20), DELTA)],
        [LedgerRecord(2, 0, psg(1.1, 0.01, 50), DELTA), LedgerRecord(2, 1, psg(1.5, 0.02, 40), DELTA)],
    ]


def _write(path: Path) -> list[LedgerRecord]:
    ledger = Ledger(path)
    for round_records in _history():
        ledger.append(round_records)
    return [record for round_records in _history() for record in round_records]


def test_ledger_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    written = _write(path)
    assert read_ledger(path) == written
    lines = path.read_text().splitlines()
    assert len(lines) == len(written)
    first = json.loads(lines[0])
    assert list(first) == ["round", "client", "mechanism", "delta"]
    assert first["mechanism"]["name"] == "poisson_subsampled_gaussian"
    odd = LedgerRecord(7, 3, psg(1 / 3, 1 / 7, 2**40), 1 / 11)
    assert LedgerRecord.from_json(odd.to_json()) == odd  # floats and big ints exact


def test_ledger_append_flushes_then_fsyncs_once_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.jsonl"
    Ledger(path).append(_history()[0])
    seen: list[bytes] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        seen.append(path.read_bytes())  # what another reader sees at fsync time
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", spy)
    Ledger(path).append(_history()[1])
    assert len(seen) == 1
    assert seen[0].endswith((_history()[1][0].to_json() + "\n").encode())


@pytest.mark.parametrize("cut", [1, 10, -1])
def test_truncated_last_line_names_its_line(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "ledger.jsonl"
    _write(path)
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + cut] if cut > 0 else data[:cut])  # cut=-1: just the newline
    with pytest.raises(LedgerError, match=r"line 5\b.*truncated") as info:
        read_ledger(path)
    assert info.value.line == 5
    with pytest.raises(LedgerError, match="truncated"):
        Ledger(path).append(_history()[0])  # never fuse a record onto a torn line


@pytest.mark.parametrize(
    "replacement, message",
    [
        (b'{"round": 0, "client": 1, "mechanism": {"name": "poisson_subsampled_gaussian"', "JSON"),
        (b"\xff\xfe garbage", "UTF-8"),
        (b"", "empty"),
        (b'{"round":0,"client":1,"mechanism":{"name":"poisson_subsampled_gaussian",'
         b'"noise_multiplier":-1.0,"sample_rate":0.01,"steps":50},"delta":1e-05}', "noise_multiplier"),
        (b'{"round":0,"client":1,"client":2,"mechanism":{"name":"poisson_subsampled_gaussian",'
         b'"noise_multiplier":1.0,"sample_rate":0.01,"steps":50},"delta":1e-05}', "duplicate"),
        (b'{"round":3,"client":1,"mechanism":{"name":"poisson_subsampled_gaussian",'
         b'"noise_multiplier":1.0,"sample_rate":0.01,"steps":50},"delta":1e-05}', "rounds must not decrease"),
    ],
)
def test_garbled_line_names_its_line(tmp_path: Path, replacement: bytes, message: str) -> None:
    path = tmp_path / "ledger.jsonl"
    _write(path)
    lines = path.read_bytes().split(b"\n")
    lines[1] = replacement  # line 2 of 5 (the round-3 variant breaks order at line 3)
    path.write_bytes(b"\n".join(lines))
    expected_line = 3 if "decrease" in message else 2
    with pytest.raises(LedgerError, match=rf"line {expected_line}\b.*{message}") as info:
        read_ledger(path)
    assert info.value.line == expected_line


# --------------------------------------------------------------------------------- budget


def test_client_epsilons_recompute_from_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _write(path)
    records = read_ledger(path)
    per_client = client_mechanisms(records)
    assert per_client == {
        0: [psg(1.1, 0.01, 50), psg(1.0, 0.05, 20), psg(1.1, 0.01, 50)],
        1: [psg(1.1, 0.01, 50), psg(1.5, 0.02, 40)],
    }
    bounds = client_epsilons(records, DELTA)
    assert set(bounds) == {0, 1}
    for client, mechanisms in per_client.items():
        assert bounds[client] == prv_epsilon(mechanisms, DELTA)
        assert bounds[client].method == "prv"
    # Heterogeneous history: more than the first mechanism alone, at most everything as the worst one.
    assert bounds[0].lower > prv_epsilon([psg(1.1, 0.01, 100)], DELTA).upper
    assert bounds[0].upper < prv_epsilon([psg(1.0, 0.05, 120)], DELTA).lower

    upto_1 = client_epsilons(records, DELTA, upto_round=1)
    assert upto_1[0] == prv_epsilon([psg(1.1, 0.01, 50), psg(1.0, 0.05, 20)], DELTA)
    assert upto_1[1] == prv_epsilon([psg(1.1, 0.01, 50)], DELTA)
    assert upto_1[0].upper < bounds[0].upper
    assert client_mechanisms(records, upto_round=0) == {0: [psg(1.1, 0.01, 50)], 1: [psg(1.1, 0.01, 50)]}


def test_epsilon_bound_validation_and_round_trip() -> None:
    bound = EpsilonBound(lower=1.0, estimate=1.1, upper=1.2, delta=DELTA, method="prv")
    assert EpsilonBound.from_dict(json.loads(json.dumps(bound.to_dict()))) == bound
    with pytest.raises(ValueError, match="lower <= estimate <= upper"):
        EpsilonBound(lower=1.3, estimate=1.1, upper=1.2, delta=DELTA, method="prv")
    with pytest.raises(ValueError, match="delta"):
        prv_epsilon([psg(1.0, 0.01, 10)], delta=0.0)
    with pytest.raises(ValueError, match="eps_error"):
        prv_epsilon([psg(1.0, 0.01, 10)], DELTA, eps_error=-0.1)


def test_accounting_imports_no_torch_or_sibling_packages() -> None:
    from tests.isolation import loaded_modules_after_import

    forbidden = ("torch", "torch.distributed", "fedsim", "secagg", "cli", "opacus")
    assert loaded_modules_after_import("accounting", forbidden) == []
