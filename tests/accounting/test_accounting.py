"""Tests for the accounting package: mechanisms, PRV/RDP composition, ledger, budgets.

Independent references (PLD, closed forms) and calibration: test_accounting_reference.py.
"""

from __future__ import annotations

import hashlib
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
    BudgetTracker,
    ClientLevelGaussian,
    DistributedSkellam,
    EpsilonBound,
    Ledger,
    LedgerError,
    LedgerRecord,
    PoissonSubsampledGaussian,
    PRVComposer,
    accounted_history,
    audit_ledger,
    budget_history,
    budget_snapshot,
    client_epsilons,
    client_mechanisms,
    merge_mechanisms,
    prv_epsilon,
    rdp_epsilon,
    read_ledger,
)
from accounting.prv import grid_capacity
from accounting.rdp import DEFAULT_ORDERS, subsampled_gaussian_rdp

DELTA = 1e-5
EPS_ERROR = 0.01


def psg(sigma: float, q: float, steps: int) -> PoissonSubsampledGaussian:
    return PoissonSubsampledGaussian(noise_multiplier=sigma, sample_rate=q, steps=steps)


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Independent Balle & Wang (2018) Thm. 8 solve: delta(eps) = Phi(-eps/mu+mu/2) - e^eps Phi(-eps/mu-mu/2)."""

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps + norm.logcdf(-eps / mu - mu / 2)) - delta

    hi = 200.0
    while excess(hi) > 0:
        hi *= 2
    return brentq(excess, 0.0, hi, xtol=1e-13)


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


def test_client_level_round_records_realised_noise_and_cohort_rate() -> None:
    rounds = ClientLevelGaussian(noise_multiplier=0.9, cohort_size=50, population=1000, steps=3)
    assert rounds.sample_rate == 0.05 and rounds.sampling == "poisson"
    assert ClientLevelGaussian.from_dict(json.loads(json.dumps(rounds.to_dict()))) == rounds
    assert rounds.accounted_as() == psg(0.9, 0.05, 3)
    # Fixed-size cohorts: no amplification, sensitivity 2S (see the class docstring).
    fixed = ClientLevelGaussian(0.9, 50, 1000, 3, sampling="fixed_size")
    assert fixed.accounted_as() == psg(0.45, 1.0, 3)
    for kwargs, field in (
        ({"population": 10}, "population"),
        ({"cohort_size": 0}, "cohort_size"),
        ({"sampling": "uniform"}, "sampling"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
    ):
        with pytest.raises(ValueError, match=rf"ClientLevelGaussian\.{field}"):
            ClientLevelGaussian(**{"noise_multiplier": 1.0, "cohort_size": 50, "population": 1000, "steps": 1, **kwargs})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("mu", 0.0, "must be > 0"), ("mu", math.inf, "must be finite"), ("l2_sensitivity", -1.0, "must be > 0"),
     ("l1_sensitivity", 2000.0, r"must be at most sqrt\(dim\) \* l2_sensitivity"), ("dim", 0, "must be an integer >= 1"),
     ("cohort_size", 0, "must be an integer >= 1"), ("population", 3, "must be an integer >= cohort_size=4"),
     ("sampling", "fixed", "must be 'poisson' or 'fixed_size'"), ("steps", -1, "must be an integer >= 0"),
     ("dim", 2.0, "must be an integer")],
)
def test_distributed_skellam_refuses_bad_fields_naming_them(field: str, value: object, message: str) -> None:
    fields = {"mu": 1e4, "l1_sensitivity": 400.0, "l2_sensitivity": 100.0, "dim": 16, "cohort_size": 4,
              "population": 10, "sampling": "poisson", "participants": (1, 2), "steps": 1}
    DistributedSkellam(**fields)  # valid as given
    with pytest.raises(ValueError, match=rf"DistributedSkellam\.{field} {message}"):
        DistributedSkellam(**{**fields, field: value})


def test_a_skellam_record_has_no_dominating_gaussian_and_never_reaches_the_prv_route() -> None:
    """Its records go to accounting.skellam (RDP, per client); a Gaussian accountant handed one refuses it."""
    sum_ = DistributedSkellam(1e4, 400.0, 100.0, 16, 4, 10, "poisson", (1, 2), 1)
    assert not hasattr(sum_, "accounted_as")
    with pytest.raises(TypeError, match=r"mechanisms\[1\] is a DistributedSkellam, which has no dominating"):
        accounted_history([psg(1, 0.1, 2), sum_])
    with pytest.raises(TypeError, match="no dominating"):
        prv_epsilon([sum_], DELTA)
    # beside sample-level records, the sample-level figures are exactly those of the sample-level records alone
    sample = [LedgerRecord(1, 1, psg(1.1, 0.05, 4), DELTA), LedgerRecord(2, 1, psg(1.1, 0.05, 4), DELTA)]
    mixed = sample[:1] + [LedgerRecord(1, None, sum_, DELTA)] + sample[1:]
    assert budget_snapshot(mixed, DELTA).clients == budget_snapshot(sample, DELTA).clients
    assert budget_snapshot(mixed, DELTA).population is None


def test_accounted_history_is_canonical() -> None:
    a = accounted_history([psg(2, 0.1, 3), psg(1, 0.2, 1), psg(2, 0.1, 4)])
    b = accounted_history([psg(1, 0.2, 1), psg(2, 0.1, 7)])
    assert a == b == (psg(1, 0.2, 1), psg(2, 0.1, 7))


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
        # upper = eps(delta - delta_error) + w, w <= 0.4% of eps (Gopi et al. 2021, Thm. 5.5)
        assert 0.0 < b.upper - b.estimate <= 0.006 * b.estimate


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
    assert (rdp - bound.upper) / bound.upper > 0.05  # RDP is 8-15% looser than PRV here


def test_merged_and_split_histories_agree() -> None:
    split = prv_epsilon([psg(1.0, 0.01, 100), psg(1.2, 0.01, 50), psg(1.0, 0.01, 100)], DELTA)
    merged = prv_epsilon([psg(1.0, 0.01, 200), psg(1.2, 0.01, 50)], DELTA)
    assert split == merged


# ------------------------------------------------------------------------------ fallbacks


def test_real_prv_failure_falls_back_to_pld(caplog: pytest.LogCaptureFixture) -> None:
    mechanisms = [psg(0.6, 0.2, 100)]  # prv_accountant 0.2.0: "Discrete mean differs ..."
    with caplog.at_level(logging.WARNING, logger="accounting.prv"):
        bound = prv_epsilon(mechanisms, DELTA)
    assert bound.method == "pld"
    assert bound.lower == bound.estimate == bound.upper < rdp_epsilon(mechanisms, DELTA)
    assert "Discrete mean" in caplog.text


class _Raising:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise self.exc


@pytest.mark.parametrize(
    "exc", [RuntimeError("Discrete mean differs from continuous mean significantly."), MemoryError()]
)
def test_forced_prv_failure_subsampled_gives_sound_pld_then_rdp_bound(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    mechanisms = [psg(1.0, 0.01, 1000)]
    tight = prv_epsilon(mechanisms, DELTA)
    monkeypatch.setattr(prv_module, "discretise", _Raising(exc))
    bound = prv_epsilon(mechanisms, DELTA)
    assert bound.method == "pld"
    assert tight.lower <= bound.upper <= tight.upper * 1.01
    monkeypatch.setattr(prv_module, "pld_epsilon", _Raising(exc))
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
    monkeypatch.setattr(prv_module, "compose", _Raising(exc))
    bound = prv_epsilon([psg(sigma, 1.0, steps)], DELTA)
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    assert bound.method == "analytic_gaussian"
    assert exact <= bound.upper <= exact + 1e-9
    assert tight.lower <= bound.upper <= tight.upper


def test_full_sampling_at_many_steps_never_crashes() -> None:
    # prv_accountant 0.2.0 raises MemoryError here; the grid guard answers exactly instead.
    bound = prv_epsilon([psg(1.0, 1.0, 10_000)], DELTA)
    assert bound.method == "analytic_gaussian"
    assert bound.upper == pytest.approx(exact_gaussian_epsilon(100.0, DELTA), rel=1e-9)


def test_grid_guard_falls_back_without_running_prv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prv_module, "discretise", _Raising(AssertionError("must not be called")))
    bound = prv_epsilon([psg(1.0, 0.01, 1000)], DELTA, max_grid_points=1000)
    assert bound.method == "pld"


def test_contradictory_prv_band_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    # Far below the exact value at q=1, far above RDP's at q<1 below.
    monkeypatch.setattr(prv_module, "epsilon_band", lambda *args: (0.5, 0.51, 0.52))
    full = prv_epsilon([psg(2.0, 1.0, 10)], DELTA)
    assert full.method == "analytic_gaussian"
    assert full.upper == pytest.approx(exact_gaussian_epsilon(math.sqrt(10) / 2.0, DELTA), abs=1e-9)
    private = [psg(20.0, 0.01, 10)]
    assert rdp_epsilon(private, DELTA) < 0.5
    assert prv_epsilon(private, DELTA).method == "pld"


def test_fallback_is_logged_once_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    composer = PRVComposer(max_grid_points=1000)
    with caplog.at_level(logging.DEBUG, logger="accounting.prv"):
        for steps in (1000, 1000, 1000):
            composer.epsilon([psg(1.0, 0.01, steps)], DELTA)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "max_grid_points" in warnings[0].getMessage()


# ------------------------------------------------------------------ composer and grids


def test_grid_capacity_is_a_power_of_two_or_three_halves_of_one() -> None:
    assert [grid_capacity(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 48, 10_000)] == [1, 2, 3, 4, 6, 8, 12, 16, 48, 12_288]
    with pytest.raises(ValueError, match="total_steps"):
        grid_capacity(0)


@pytest.mark.parametrize("sigma, q, steps", [(1.0, 32 / 600, 48), (0.8, 0.1, 60), (2.0, 1.0, 10)])
def test_composition_equals_prv_accountants_on_the_same_grid(sigma: float, q: float, steps: int) -> None:
    """The float64 Fourier composition reproduces prv_accountant's PRVAccountant on our grid."""
    import warnings

    from prv_accountant import PRVAccountant
    from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism

    from accounting.rdp import per_step_rdp

    grid = prv_module.choose_grid((psg(sigma, q, steps),), DELTA, EPS_ERROR, [per_step_rdp(sigma, q)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accountant = PRVAccountant(
            prvs=[PoissonSubsampledGaussianMechanism(q, sigma)], max_self_compositions=[grid.capacity],
            eps_error=EPS_ERROR, delta_error=DELTA * 1e-3, eps_max=grid.half_width,
        )
    reference = accountant.compute_epsilon(DELTA, [steps])
    bound = prv_epsilon([psg(sigma, q, steps)], DELTA, EPS_ERROR, relative_eps_error=0.0)
    assert bound.method == "prv"
    assert (bound.lower, bound.estimate, bound.upper) == pytest.approx(reference, abs=1e-7)


def test_cached_composer_gives_bit_identical_figures() -> None:
    composer = PRVComposer()
    composer.prepare([psg(1.0, 0.02, 60)], DELTA)
    for steps in (7, 32, 33):
        history = [psg(1.0, 0.02, steps), psg(1.5, 0.05, steps // 2 + 1)]
        assert composer.epsilon(history, DELTA) == prv_epsilon(history, DELTA)
        assert composer.rdp_epsilon(history, DELTA) == rdp_epsilon(history, DELTA)


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


def _opacus_rdp_analysis():
    """opacus/accountants/analysis/rdp.py (numpy and scipy only), loaded without ``import opacus`` (torch: slow)."""
    import importlib.util

    spec = importlib.util.find_spec("opacus")
    path = Path(spec.origin).parent / "accountants" / "analysis" / "rdp.py"
    module_spec = importlib.util.spec_from_file_location("opacus_rdp_analysis", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_rdp_equals_opacus_rdp_analysis() -> None:
    opacus_rdp = _opacus_rdp_analysis()
    for sigma, q, steps in ((1.0, 32 / 600, 48), (2.0, 0.2, 30)):
        rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(DEFAULT_ORDERS))
        opacus_eps, _ = opacus_rdp.get_privacy_spent(orders=list(DEFAULT_ORDERS), rdp=rdp, delta=DELTA)
        assert rdp_epsilon([psg(sigma, q, steps)], DELTA) == pytest.approx(opacus_eps, rel=1e-9)


# --------------------------------------------------------------------------------- ledger


def _history() -> list[list[LedgerRecord]]:
    """Three rounds; client 1 skips round 1; sigma and q change between rounds."""
    return [
        [LedgerRecord(0, 0, psg(1.1, 0.01, 50), DELTA), LedgerRecord(0, 1, psg(1.1, 0.01, 50), DELTA)],
        [LedgerRecord(1, 0, psg(1.0, 0.05, 20), DELTA)],
        [LedgerRecord(2, 0, psg(1.1, 0.01, 50), DELTA), LedgerRecord(2, 1, psg(1.5, 0.02, 40), DELTA)],
    ]


def _write(path: Path, ledger: Ledger | None = None) -> list[LedgerRecord]:
    ledger = ledger or Ledger(path)
    for round_records in _history():
        ledger.append(round_records)
    return [record for round_records in _history() for record in round_records]


def test_ledger_round_trip_with_sequence_numbers_and_hash_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    written = _write(path)
    assert read_ledger(path) == written
    lines = path.read_text().splitlines()
    assert len(lines) == len(written)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert list(first) == sorted(first) == ["client", "delta", "format_version", "mechanism", "prev", "round", "seq"]
    assert first["mechanism"]["name"] == "poisson_subsampled_gaussian"
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["prev"] == "0" * 64
    assert second["prev"] == hashlib.sha256(lines[0].encode()).hexdigest()
    odd = LedgerRecord(7, 3, psg(1 / 3, 1 / 7, 2**40), 1 / 11)
    assert LedgerRecord.from_json(odd.to_json()) == odd  # floats and big ints exact
    population = LedgerRecord(7, None, ClientLevelGaussian(0.8, 50, 1000, 1), DELTA)
    assert LedgerRecord.from_json(population.to_json()) == population
    with pytest.raises(ValueError, match="client must be None"):
        LedgerRecord(7, 3, ClientLevelGaussian(0.8, 50, 1000, 1), DELTA)


def test_ledger_signs_each_append_and_publishes_its_key(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    _write(path, ledger)
    assert (tmp_path / "ledger.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    signature = json.loads((tmp_path / "ledger.sig").read_text())
    assert signature["records"] == ledger.records == 5 and signature["fingerprint"] == ledger.fingerprint
    audit = audit_ledger(path, fingerprint=ledger.fingerprint)
    assert audit.ok, audit.problems
    assert (audit.signed_records, audit.fingerprint, audit.records) == (5, ledger.fingerprint, read_ledger(path))


def test_ledger_continues_only_with_the_runs_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "ledger.jsonl"
    key = Ed25519PrivateKey.generate()
    Ledger(path, signing_key=key).append(_history()[0])
    with pytest.raises(LedgerError, match="another key"):
        Ledger(path).append(_history()[1])
    resumed = Ledger(path, signing_key=key)
    resumed.append(_history()[1])
    assert resumed.records == 3 and audit_ledger(path).ok


def test_records_are_on_disk_before_their_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append(_history()[0])
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync_spy(fd: int) -> None:
        events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1])
        real_fsync(fd)

    def replace_spy(src: str, dst: str) -> None:
        events.append("replace " + Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(ledger_module.os, "fsync", fsync_spy)
    monkeypatch.setattr(ledger_module.os, "replace", replace_spy)
    ledger.append(_history()[1])
    assert events[0] == "fsync ledger.jsonl"  # one fsync for the batch, first
    assert events.count("fsync ledger.jsonl") == 1
    assert events.index("replace ledger.sig") > 0


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


def _line(record: dict, seq: int, prev: str) -> bytes:
    return json.dumps({**record, "seq": seq, "prev": prev}, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "replacement, message",
    [
        (b'{"round": 0, "client": 1, "mechanism": {"name": "poisson_subsampled_gaussian"', "JSON"),
        (b"\xff\xfe garbage", "ASCII"),
        (b"", "empty"),
        (b"NEG", "noise_multiplier"),
        (b'{"round":0,"client":1,"client":2}', "duplicate"),
        (b"SPACED", "canonical"),
        (b"ROUND3", "record 2: changed after it was written"),
    ],
)
def test_garbled_line_names_its_line(tmp_path: Path, replacement: bytes, message: str) -> None:
    path = tmp_path / "ledger.jsonl"
    _write(path)
    lines = path.read_bytes().split(b"\n")
    original = json.loads(lines[1])
    seq, prev = original.pop("seq"), original.pop("prev")
    if replacement == b"NEG":
        original["mechanism"]["noise_multiplier"] = -1.0
        replacement = _line(original, seq, prev)
    elif replacement == b"SPACED":
        replacement = _line(original, seq, prev).replace(b",", b", ")
    elif replacement == b"ROUND3":
        original["round"] = 3
        replacement = _line(original, seq, prev)
    lines[1] = replacement  # line 2 of 5
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerError, match=rf"line 2\b.*{message}") as info:
        read_ledger(path)
    assert info.value.line == 2


def test_rounds_must_not_decrease_even_in_a_rechained_ledger(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, signing_key=Ed25519PrivateKey.generate())
    ledger.append([LedgerRecord(3, 0, psg(1.0, 0.01, 5), DELTA)])
    ledger.append([LedgerRecord(2, 0, psg(1.0, 0.01, 5), DELTA)])  # the writer chains it; the reader refuses it
    with pytest.raises(LedgerError, match=r"line 2\b.*rounds must not decrease"):
        read_ledger(path)


def test_ledger_without_chain_fields_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(LedgerRecord(1, 1, psg(1.0, 0.01, 5), DELTA).to_json() + "\n")
    with pytest.raises(LedgerError, match=r"line 1\b.*not a hash-chained"):
        read_ledger(path)


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


def test_tracker_replays_to_the_same_figures_as_a_cold_recomputation(tmp_path: Path) -> None:
    tracker = BudgetTracker(DELTA)
    snapshots = [tracker.add(round_records) for round_records in _history()]
    records = [r for round_records in _history() for r in round_records]
    assert snapshots == budget_history(records, DELTA)
    last = snapshots[-1]
    assert last == budget_snapshot(records, DELTA)
    assert last.clients[0].prv == prv_epsilon(client_mechanisms(records)[0], DELTA)
    assert (last.clients[0].rounds, last.clients[0].steps, last.clients[1].rounds) == (3, 120, 2)
    assert last.worst().client == 0 and last.worst().prv.upper == max(b.prv.upper for b in last.clients.values())
    assert last.clients[0].rdp == rdp_epsilon(client_mechanisms(records)[0], DELTA)
    assert 1.0 < last.clients[0].rdp_over_prv < 1.5
    quantiles = last.quantiles()
    assert quantiles[0.0] == last.clients[1].prv.upper and quantiles[1.0] == last.clients[0].prv.upper
    with pytest.raises(ValueError, match="precedes round 2"):
        tracker.add(_history()[0])


def test_client_level_rounds_are_the_populations_budget() -> None:
    tracker = BudgetTracker(DELTA)
    for r in range(1, 4):
        snapshot = tracker.add([
            LedgerRecord(r, 1, psg(1.0, 0.05, 5), DELTA),
            LedgerRecord(r, None, ClientLevelGaussian(0.8, 50, 1000, 1), DELTA),
        ])
    assert set(snapshot.clients) == {1}
    assert snapshot.population.level == "client" and snapshot.population.rounds == 3
    assert snapshot.population.prv == prv_epsilon([psg(0.8, 0.05, 3)], DELTA)
    assert snapshot.worst().client == 1  # the worst *client* is a sample-level figure
    assert client_mechanisms([LedgerRecord(1, None, ClientLevelGaussian(0.8, 50, 1000, 1), DELTA)]) == {}


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
    from tests.support.isolation import loaded_modules_after_import

    forbidden = ("torch", "torch.distributed", "fedsim", "secagg", "cli", "opacus")
    assert loaded_modules_after_import("accounting", forbidden) == []
