"""`fedsim budget show|curve|verify|plan` on small synthetic runs written with the Ledger API.

A synthetic run holds what `fedsim run` writes beside its ledger: metrics.jsonl (the
worst client's ε per round) and summary.json, computed with the BudgetTracker a server
keeps. Tamper tests edit a copy and expect verify to exit 1 naming the record.
"""

from __future__ import annotations

import math
import json
import shutil
from pathlib import Path
from typing import Optional

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from accounting import BudgetTracker, Ledger, LedgerRecord, PoissonSubsampledGaussian, prv_epsilon
from cli.app import app

DELTA = 1e-5
ROUNDS = 4
SHARDS = {1: 600, 2: 500, 3: 800}  # examples per client: q = 32 / n


def round_records(round_: int, sigma: float = 1.0) -> list[LedgerRecord]:
    """Clients 1 and 2 every round, client 3 from round 2 on."""
    return [
        LedgerRecord(round_, client, PoissonSubsampledGaussian(sigma, 32 / n, 6), DELTA)
        for client, n in SHARDS.items()
        if client != 3 or round_ >= 2
    ]


def write_run(out: Path, key: Optional[Ed25519PrivateKey] = None, sigmas: Optional[list[float]] = None) -> Ledger:
    """A run directory as `fedsim run` leaves it: ledger (+ key, signature), metrics.jsonl, summary.json."""
    out.mkdir(parents=True)
    ledger = Ledger(out / "ledger.jsonl", signing_key=key)
    tracker = BudgetTracker(DELTA)
    metrics = []
    for r in range(1, ROUNDS + 1):
        records = round_records(r, (sigmas or [1.0] * ROUNDS)[r - 1])
        ledger.append(records)
        worst = tracker.add(records).worst()
        metrics.append({"method": "la-lora", "round": r, "epsilon": worst.prv.upper, "delta": DELTA, "epsilon_rdp": worst.rdp})
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    summary = {"method": "la-lora", "rounds": ROUNDS, "epsilon": worst.prv.upper, "epsilon_method": worst.prv.method, "delta": DELTA}
    (out / "summary.json").write_text(json.dumps(summary))
    return ledger


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs") / "demo"
    return out, write_run(out).fingerprint


@pytest.fixture
def copy(run: tuple[Path, str], tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run[0], target)
    return target


def budget(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["budget", *args])
    return result.exit_code, result.output


def ledger_lines(run_dir: Path) -> list[bytes]:
    return (run_dir / "ledger.jsonl").read_bytes().splitlines(keepends=True)


# ---------------------------------------------------------------------------------- show


def test_show_json_rows_recompute_the_reported_epsilon(run: tuple[Path, str]) -> None:
    code, output = budget("show", str(run[0]), "--json")
    assert code == 0, output
    rows = json.loads(output)
    assert [r["client"] for r in rows] == [1, 2, 3]
    assert {r["steps"] for r in rows} == {6 * ROUNDS, 6 * (ROUNDS - 1)}
    summary = json.loads((run[0] / "summary.json").read_text())
    assert max(r["epsilon_upper"] for r in rows) == summary["epsilon"]
    for r in rows:
        assert r["epsilon_lower"] <= r["epsilon_estimate"] <= r["epsilon_upper"] < r["epsilon_rdp"]
        assert r["rdp_over_prv"] == pytest.approx(r["epsilon_rdp"] / r["epsilon_upper"])
        assert r["accountant"] == "prv" and r["level"] == "sample" and r["delta"] == DELTA


def test_show_table_names_the_worst_client_and_quantiles(run: tuple[Path, str]) -> None:
    code, output = budget("show", str(run[0]))
    assert code == 0, output
    assert "ε upper" in output and "RDP/PRV" in output
    assert "worst client 2" in output and "median" in output and "p90" in output  # client 2: smallest shard


def test_show_filters_by_client_round_and_delta(run: tuple[Path, str]) -> None:
    code, output = budget("show", str(run[0]), "--client", "3", "--round", "2", "--delta", "1e-6", "--json")
    assert code == 0, output
    (row,) = json.loads(output)
    assert (row["client"], row["round"], row["rounds"], row["steps"], row["delta"]) == (3, 2, 1, 6, 1e-6)
    assert row["epsilon_upper"] == prv_epsilon([PoissonSubsampledGaussian(1.0, 32 / 800, 6)], 1e-6).upper
    code, output = budget("show", str(run[0]), "--csv")
    assert code == 0
    lines = output.splitlines()
    assert lines[0].startswith("method,round,client,level,rounds,steps,delta,epsilon_upper") and len(lines) == 4


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, named",
    [
        (["show", "RUN", "--delta", "1.5"], "--delta=1.5"),
        (["show", "RUN", "--delta", "0"], "--delta=0.0"),
        (["show", "RUN", "--client", "99"], "--client=99"),
        (["show", "RUN", "--client", "-1"], "--client=-1"),
        (["show", "RUN", "--round", "0"], "--round=0"),
        (["show", "RUN", "--round", "99"], "--round=99"),
        (["show", "RUN", "--json", "--csv"], "--json and --csv"),
        (["show", "MISSING"], "RUN_DIR="),
        (["curve", "RUN", "--out", "eps.txt"], "--out="),
        (["curve", "RUN", "--delta", "2"], "--delta=2.0"),
        (["verify", "RUN", "--fingerprint", "zz"], "--fingerprint='zz'"),
        (["verify", "RUN", "--public-key", "MISSING"], "--public-key="),
        (["plan", "--target-epsilon", "0", "--delta", "1e-5", "--rounds", "8", "--local-steps", "6", "--sample-rate", "0.05"], "--target-epsilon=0.0"),
        (["plan", "--target-epsilon", "-1", "--delta", "1e-5", "--rounds", "8", "--local-steps", "6", "--sample-rate", "0.05"], "--target-epsilon=-1.0"),
        (["plan", "--target-epsilon", "1", "--delta", "1", "--rounds", "8", "--local-steps", "6", "--sample-rate", "0.05"], "--delta=1.0"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--rounds", "-2", "--local-steps", "6", "--sample-rate", "0.05"], "--rounds=-2"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--rounds", "8", "--local-steps", "-3", "--sample-rate", "0.05"], "--local-steps=-3"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--rounds", "8", "--local-steps", "6", "--sample-rate", "1.5"], "--sample-rate=1.5"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--rounds", "8", "--cohort-size", "50", "--population", "10"], "--population=10"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--rounds", "8", "--cohort-size", "5", "--population", "10", "--sampling", "random"], "--sampling='random'"),
        (["plan", "--target-epsilon", "1e-4", "--delta", "1e-10", "--rounds", "1", "--local-steps", "1", "--sample-rate", "1"], "out of reach"),
    ],
)
def test_bad_input_exits_2_naming_the_option(run: tuple[Path, str], tmp_path: Path, args: list[str], named: str) -> None:
    args = [str(run[0]) if a == "RUN" else str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    code, output = budget(*args)
    assert code == 2, output
    assert "error:" in output and named in output


def test_error_messages_escape_markup(tmp_path: Path) -> None:
    code, output = budget("show", str(tmp_path / "[bold]odd[/bold]"))
    assert code == 2 and "[bold]odd[/bold]" in output


def test_help_teaches_with_examples() -> None:
    code, output = budget("--help")
    assert code == 0 and all(name in output for name in ("show", "curve", "verify", "plan"))
    for command in ("show", "curve", "verify", "plan"):
        code, output = budget(command, "--help")
        assert code == 0 and "Examples" in output and f"fedsim budget {command}" in output


# -------------------------------------------------------------------------------- verify


def test_verify_passes_an_untouched_run_and_reports_the_key(run: tuple[Path, str]) -> None:
    code, output = budget("verify", str(run[0]))
    assert code == 0, output
    assert run[1] in output and "NOT pinned" in output and "verified" in output
    code, output = budget("verify", str(run[0]), "--fingerprint", run[1].upper())
    assert code == 0, output
    code, output = budget("verify", str(run[0]), "--public-key", str(run[0] / "ledger.pub"))
    assert code == 0, output


def _edit_line(run_dir: Path, number: int, old: bytes, new: bytes) -> None:
    lines = ledger_lines(run_dir)
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new, 1)
    (run_dir / "ledger.jsonl").write_bytes(b"".join(lines))


def test_verify_catches_a_changed_number(copy: Path) -> None:
    _edit_line(copy, 4, b'"noise_multiplier":1.0', b'"noise_multiplier":1.5')
    code, output = budget("verify", str(copy))
    assert code == 1
    assert "record 4, line 4: changed after it was written" in output


def test_verify_catches_a_change_to_the_last_record(copy: Path) -> None:
    last = len(ledger_lines(copy))
    _edit_line(copy, last, b'"steps":6', b'"steps":1')
    code, output = budget("verify", str(copy))
    assert code == 1
    assert f"record {last}, line {last}: does not match the signed head" in output


def test_verify_catches_a_deleted_line(copy: Path) -> None:
    lines = ledger_lines(copy)
    (copy / "ledger.jsonl").write_bytes(b"".join(lines[:4] + lines[5:]))
    code, output = budget("verify", str(copy))
    assert code == 1
    assert "record 5: missing (deleted from the ledger)" in output


def test_verify_catches_swapped_lines(copy: Path) -> None:
    lines = ledger_lines(copy)
    lines[2], lines[3] = lines[3], lines[2]
    (copy / "ledger.jsonl").write_bytes(b"".join(lines))
    code, output = budget("verify", str(copy))
    assert code == 1
    assert "records 3 and 4 are swapped (lines 3 and 4)" in output


@pytest.mark.parametrize("cut", [5, 1])
def test_verify_catches_truncation(copy: Path, cut: int) -> None:
    data = (copy / "ledger.jsonl").read_bytes()
    last = len(ledger_lines(copy))
    if cut == 1:  # a torn write: the last line lost its end
        (copy / "ledger.jsonl").write_bytes(data[:-10])
        expected = f"line {last}: truncated"
    else:  # whole records dropped from the end
        (copy / "ledger.jsonl").write_bytes(b"".join(ledger_lines(copy)[:-cut]))
        expected = f"record {last - cut + 1}: the signature covers {last} records but the ledger ends at record {last - cut}"
    code, output = budget("verify", str(copy))
    assert code == 1
    assert expected in output


def test_verify_catches_a_signature_by_another_key(copy: Path) -> None:
    signature = json.loads((copy / "ledger.sig").read_text())
    message = b"fedsim-ledger-head/1\n" + json.dumps(
        {"head": signature["head"], "records": signature["records"]}, sort_keys=True, separators=(",", ":")
    ).encode()
    signature["signature"] = Ed25519PrivateKey.generate().sign(message).hex()
    (copy / "ledger.sig").write_text(json.dumps(signature))
    code, output = budget("verify", str(copy))
    assert code == 1
    assert f"the signature over the head (record {signature['records']}" in output and "does not verify" in output


def test_verify_catches_a_rewritten_ledger_re_signed_with_another_key(run: tuple[Path, str], tmp_path: Path) -> None:
    """The attacker rewrites the whole ledger (more noise in round 3), re-chains it and
    re-signs it with a key of their own, replacing ledger.pub: only a pinned key, or the
    figures the run reported, can tell."""
    forged = tmp_path / "forged"
    write_run(forged, sigmas=[1.0, 1.0, 2.0, 1.0])
    for name in ("metrics.jsonl", "summary.json"):
        shutil.copy(run[0] / name, forged / name)  # what the run really reported
    code, output = budget("verify", str(forged), "--fingerprint", run[1])
    assert code == 1
    assert f"not the pinned key {run[1]}: the ledger was re-signed with another key" in output
    code, output = budget("verify", str(forged))  # unpinned: the chain and signature hold, the figures do not
    assert code == 1
    assert "metrics.jsonl line 3 (round 3): reported epsilon=" in output and "NOT pinned" in output


def test_verify_accepts_a_round_without_records(copy: Path) -> None:
    """Every client dropped before training in round 5: no record, ε unchanged; the run still reports the round."""
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    rows.append({**rows[-1], "round": ROUNDS + 1, "clients": 0})
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, output = budget("verify", str(copy))
    assert code == 0, output


def test_verify_catches_an_edited_report(copy: Path) -> None:
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    rows[1]["epsilon"] = round(rows[1]["epsilon"] - 0.1, 3)
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((copy / "summary.json").read_text())
    summary["epsilon_method"] = "analytic_gaussian"
    (copy / "summary.json").write_text(json.dumps(summary))
    code, output = budget("verify", str(copy))
    assert code == 1
    assert "metrics.jsonl line 2 (round 2): reported epsilon=" in output
    assert "summary.json: epsilon_method='analytic_gaussian'" in output


# ------------------------------------------------------------------------- curve and plan


def test_curve_writes_a_png(run: tuple[Path, str], tmp_path: Path) -> None:
    out = tmp_path / "eps.png"
    code, output = budget("curve", str(run[0]), "--out", str(out))
    assert code == 0, output
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    assert "worst client 2" in output


def test_plan_finds_the_noise_and_its_curve(tmp_path: Path) -> None:
    args = ["plan", "--target-epsilon", "1", "--delta", "1e-5", "--rounds", "8", "--local-steps", "6", "--sample-rate", str(32 / 600)]
    code, output = budget(*args, "--json", "--tolerance", "0.01")
    assert code == 0, output
    plan = json.loads(output)
    assert [p["round"] for p in plan["curve"]] == list(range(1, 9))
    assert plan["curve"][-1]["upper"] == plan["epsilon_upper"] <= 1.0
    assert plan["epsilon_rdp"] > plan["epsilon_upper"]
    sigma = plan["noise_multiplier"]
    assert prv_epsilon([PoissonSubsampledGaussian(sigma * 0.99, 32 / 600, 48)], DELTA).upper > 1.0
    out = tmp_path / "plan.png"
    code, output = budget(*args, "--tolerance", "0.01", "--out", str(out))
    assert code == 0, output
    assert "noise multiplier σ =" in output and out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("version", [2, None, True])
def test_verify_refuses_figures_written_in_an_unknown_format(copy: Path, version) -> None:
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    rows[1]["format_version"] = version
    (copy / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {**json.loads((copy / "summary.json").read_text()), "format_version": version}
    (copy / "summary.json").write_text(json.dumps(summary))
    code, output = budget("verify", str(copy))
    assert code == 1
    assert f"metrics.jsonl line 2: unreadable (format_version={version!r}, this fedsim reads 1" in " ".join(output.split())
    assert f"summary.json: unreadable (format_version={version!r}, this fedsim reads 1" in " ".join(output.split())


def test_verify_reads_figures_that_carry_the_current_format(copy: Path) -> None:
    rows = [{**json.loads(line), "format_version": 1} for line in (copy / "metrics.jsonl").read_text().splitlines()]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, output = budget("verify", str(copy))
    assert code == 0, output


def _rounds_reordered_ledger(out: Path) -> None:
    """A ledger whose second record (round 1) and third (round 2) trade places, re-chained
    and re-signed as a whole: its chain and signature hold, its rounds do not."""
    records = [r for round_ in range(1, ROUNDS + 1) for r in round_records(round_)]
    records[1], records[2] = records[2], records[1]
    (out / "ledger.jsonl").unlink()
    (out / "ledger.sig").unlink()
    (out / "ledger.pub").unlink()
    Ledger(out / "ledger.jsonl").append(records)


@pytest.mark.parametrize("how", ["raw", "re-chained"])
def test_verify_names_records_swapped_across_a_round_boundary(copy: Path, how: str) -> None:
    """It used to crash with a traceback (records[0].round=1 precedes round 2 already added)."""
    if how == "raw":
        lines = ledger_lines(copy)
        lines[1], lines[2] = lines[2], lines[1]
        (copy / "ledger.jsonl").write_bytes(b"".join(lines))
    else:
        _rounds_reordered_ledger(copy)
    code, output = budget("verify", str(copy))
    assert code == 1, output
    assert "Traceback" not in output
    flat = " ".join(output.split())
    where = "record 2, line 3" if how == "raw" else "record 3, line 3"  # re-chained: renumbered
    assert f"{where}: round 1 follows round 2; rounds must not decrease" in flat
    assert "the reported ε cannot be recomputed: readable record 3 (round 1) comes after one of round 2" in flat


# ------------------------------------------------------------------------------- epsilon


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε of the Gaussian mechanism with μ = sensitivity/σ, from its exact privacy profile
    (Balle and Wang 2018, Thm. 8): δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), solved for ε."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def profile(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(profile, 0.0, 100.0, xtol=1e-12)


def test_epsilon_brackets_the_exact_gaussian_and_matches_a_run_ledger() -> None:
    """q = 1, T steps of σ compose to one Gaussian of μ = √T/σ, whose ε is known exactly."""
    code, output = budget("epsilon", "--noise-multiplier", "2.0", "--sample-rate", "1", "--steps", "9", "--json")
    assert code == 0, output
    got = json.loads(output)
    exact = _exact_gaussian_epsilon(math.sqrt(9) / 2.0, DELTA)
    assert got["lower"] <= exact <= got["upper"] and got["upper"] <= exact * 1.005  # the band: 0.4% of ε
    assert got["rdp"] >= got["upper"] and got["delta"] == DELTA
    # the figure a run would report for a client that ran these steps
    code, output = budget("epsilon", "--noise-multiplier", "1.0", "--sample-rate", str(32 / 600), "--steps", "24", "--json")
    tracker = BudgetTracker(DELTA)
    for r in range(1, ROUNDS + 1):
        snapshot = tracker.add(round_records(r))
    assert json.loads(output)["upper"] == snapshot.clients[1].prv.upper


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--noise-multiplier", "0", "--sample-rate", "0.1", "--steps", "5"], "--noise-multiplier"),
        (["--noise-multiplier", "1", "--sample-rate", "1.5", "--steps", "5"], "--sample-rate"),
        (["--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "0"], "--steps"),
        (["--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "5", "--delta", "1"], "--delta"),
    ],
)
def test_epsilon_refuses_bad_input_naming_the_option(args: list[str], named: str) -> None:
    code, output = budget("epsilon", *args)
    assert code == 2 and f"{named}=" in output


# ------------------------------------------------------- client level (distributed Skellam)


def skellam_round(round_: int, members: tuple[int, ...], sampling: str = "poisson") -> list[LedgerRecord]:
    """One secure sum of the cohort's survivors (client=None); no sample-level records (keeps it fast)."""
    from accounting import DistributedSkellam

    sum_ = DistributedSkellam(
        mu=2e4 * len(members) / 3, l1_sensitivity=600.0, l2_sensitivity=100.0, dim=64, cohort_size=3,
        population=60, sampling=sampling, participants=members, steps=1,
    )
    return [LedgerRecord(round_, None, sum_, DELTA)]


SKELLAM_COHORTS = {1: (1, 2, 3), 2: (1, 2), 3: (2, 3), 4: (1, 2, 3)}


def write_skellam_run(out: Path, key: Ed25519PrivateKey, cohorts: dict = SKELLAM_COHORTS, sampling: str = "poisson") -> None:
    """A run with client-level DP only, as the lead wires it: client_level_epsilon_server /
    _observers (the largest over clients) in metrics and summary, epsilon 0 (no sample-level DP)."""
    out.mkdir(parents=True)
    ledger = Ledger(out / "ledger.jsonl", signing_key=key)
    tracker = BudgetTracker(DELTA)
    metrics = []
    for r in range(1, ROUNDS + 1):
        records = skellam_round(r, cohorts[r], sampling)
        ledger.append(records)
        snapshot = tracker.add(records)
        metrics.append({
            "method": "la-lora", "round": r, "epsilon": 0.0, "delta": DELTA, "epsilon_rdp": 0.0,
            "client_level_epsilon_server": snapshot.worst_client_level("server").epsilon,
            "client_level_epsilon_observers": snapshot.worst_client_level("observers").epsilon,
        })
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    summary = {
        "method": "la-lora", "rounds": ROUNDS, "epsilon": 0.0, "epsilon_method": "none",
        "delta": DELTA, "client_level_epsilon": metrics[-1]["client_level_epsilon_server"],
        "client_level_epsilon_server": metrics[-1]["client_level_epsilon_server"],
        "client_level_epsilon_observers": metrics[-1]["client_level_epsilon_observers"],
    }
    (out / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def skellam_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    out = tmp_path_factory.mktemp("runs") / "skellam"
    write_skellam_run(out, key)
    return out, key


@pytest.fixture
def skellam_copy(skellam_run: tuple[Path, Ed25519PrivateKey], tmp_path: Path) -> Path:
    target = tmp_path / "skellam-copy"
    shutil.copytree(skellam_run[0], target)
    return target


def test_show_prints_both_client_level_figures_naming_the_adversary(skellam_run: tuple[Path, Ed25519PrivateKey]) -> None:
    code, output = budget("show", str(skellam_run[0]))
    assert code == 0, output
    flat = " ".join(output.split())
    assert "client-level ε vs server" in flat and "vs observers of released models" in flat
    assert "no cohort amplification" in flat and "worst client 2" in flat  # client 2 is in every sum
    code, output = budget("show", str(skellam_run[0]), "--json")
    assert code == 0, output
    rows = json.loads(output)
    assert {r["level"] for r in rows} == {"client"}
    summary = json.loads((skellam_run[0] / "summary.json").read_text())
    assert [r["client"] for r in rows] == [1, 2, 3] and [r["steps"] for r in rows] == [3, 4, 3]
    assert max(r["epsilon_vs_server"] for r in rows) == summary["client_level_epsilon_server"]
    assert max(r["epsilon_vs_observers"] for r in rows) == summary["client_level_epsilon_observers"]
    assert all(r["epsilon_vs_observers"] <= r["epsilon_vs_server"] and r["accountant"] == "skellam_rdp" for r in rows)
    code, output = budget("show", str(skellam_run[0]), "--csv", "--client", "2")
    assert code == 0, output
    header, *lines = output.splitlines()
    assert "epsilon_vs_server" in header.split(",") and "epsilon_vs_observers" in header.split(",")
    assert len(lines) == 1 and lines[0].split(",")[2] == "2"


def test_verify_recomputes_the_client_level_figures_and_catches_a_reported_one_that_differs(skellam_copy: Path) -> None:
    code, output = budget("verify", str(skellam_copy))
    assert code == 0, output
    summary = json.loads((skellam_copy / "summary.json").read_text())
    summary["client_level_epsilon_observers"] *= 0.9
    (skellam_copy / "summary.json").write_text(json.dumps(summary))
    rows = [json.loads(line) for line in (skellam_copy / "metrics.jsonl").read_text().splitlines()]
    rows[2]["client_level_epsilon_server"] = rows[2]["client_level_epsilon_observers"]  # claims amplification
    (skellam_copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, output = budget("verify", str(skellam_copy))
    assert code == 1
    flat = " ".join(output.split())
    assert "metrics.jsonl line 3 (round 3): reported client_level_epsilon_server=" in flat
    assert "against the server" in flat
    assert "summary.json (final round 4): reported client_level_epsilon_observers=" in flat


def test_verify_requires_the_client_level_figures_of_a_skellam_ledger(skellam_copy: Path) -> None:
    summary = json.loads((skellam_copy / "summary.json").read_text())
    del summary["client_level_epsilon_server"], summary["client_level_epsilon_observers"]
    (skellam_copy / "summary.json").write_text(json.dumps(summary))
    code, output = budget("verify", str(skellam_copy))
    assert code == 1
    assert "summary.json: does not report client_level_epsilon_server" in " ".join(output.split())


def test_verify_catches_a_tampered_participants_list(skellam_copy: Path, skellam_run: tuple[Path, Ed25519PrivateKey], tmp_path: Path) -> None:
    """Dropping client 2 from the sums it took part in would lower its figure against the
    server. Edited in place, the chain says so; rewritten and re-signed with the run's own
    key, the figures the run reported do."""
    _edit_line(skellam_copy, 1, b'"participants":[1,2,3]', b'"participants":[1,3]')
    code, output = budget("verify", str(skellam_copy))
    assert code == 1
    assert "record 1, line 1: changed after it was written" in output
    forged = tmp_path / "forged"
    write_skellam_run(forged, skellam_run[1], cohorts={**SKELLAM_COHORTS, 4: (1, 3)})
    for name in ("metrics.jsonl", "summary.json"):
        shutil.copy(skellam_run[0] / name, forged / name)
    code, output = budget("verify", str(forged))
    assert code == 1
    assert "metrics.jsonl line 4 (round 4): reported client_level_epsilon_server=" in " ".join(output.split())


def test_verify_reads_an_old_run_that_reports_only_client_level_epsilon(tmp_path: Path) -> None:
    """Ledgers of ClientLevelGaussian rounds replay as before, and their summary's one
    client-level key is checked against the population's figure."""
    from accounting import ClientLevelGaussian

    out = tmp_path / "old"
    out.mkdir()
    ledger = Ledger(out / "ledger.jsonl", signing_key=Ed25519PrivateKey.generate())
    tracker = BudgetTracker(DELTA)
    metrics = []
    for r in range(1, 3):  # client level only: "epsilon" then was the population's figure
        records = [LedgerRecord(r, None, ClientLevelGaussian(0.9, 5, 60, 1), DELTA)]
        ledger.append(records)
        snapshot = tracker.add(records)
        metrics.append({"round": r, "epsilon": snapshot.population.prv.upper, "delta": DELTA})
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    figure = snapshot.population.prv.upper
    summary = {"epsilon": figure, "delta": DELTA, "client_level_epsilon": figure}
    (out / "summary.json").write_text(json.dumps(summary))
    assert snapshot.population.prv == prv_epsilon([ClientLevelGaussian(0.9, 5, 60, 2)], DELTA)
    code, output = budget("verify", str(out))
    assert code == 0, output
    (out / "summary.json").write_text(json.dumps({**summary, "client_level_epsilon": summary["client_level_epsilon"] / 2}))
    code, output = budget("verify", str(out))
    assert code == 1 and "reported client_level_epsilon=" in " ".join(output.split())


# ------------------------------------------------------------------ epsilon --history


def test_epsilon_of_a_toml_history_is_the_composition_of_its_mechanisms(tmp_path: Path) -> None:
    from accounting import PRVComposer

    history = tmp_path / "history.toml"
    history.write_text(
        "[[mechanism]]\nnoise_multiplier = 1.0\nsample_rate = 0.05\nsteps = 30\n\n"
        "[[mechanism]]\nname = \"poisson_subsampled_gaussian\"\nnoise_multiplier = 2\nsample_rate = 0.1\nsteps = 20\n"
    )
    code, output = budget("epsilon", "--history", str(history), "--json")
    assert code == 0, output
    got = json.loads(output)
    mechanisms = [PoissonSubsampledGaussian(1.0, 0.05, 30), PoissonSubsampledGaussian(2.0, 0.1, 20)]
    composer = PRVComposer()
    bound = composer.epsilon(mechanisms, DELTA)
    assert (got["upper"], got["estimate"], got["lower"], got["method"]) == (bound.upper, bound.estimate, bound.lower, bound.method)
    assert got["rdp"] == composer.rdp_epsilon(mechanisms, DELTA) and got["delta"] == DELTA
    assert got["mechanism"] == [m.to_dict() for m in mechanisms]
    single = json.loads(budget("epsilon", "--noise-multiplier", "1", "--sample-rate", "0.05", "--steps", "30", "--json")[1])
    assert got["upper"] > single["upper"] and set(got) == set(single)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[[mechanism]]\nnoise_multiplier = 1.0\nsample_rate = 0.1\nsteps = 5\n[[mechanism]]\nnoise_multiplier = 1.0\nsample_rate = 1.5\nsteps = 5\n",
         "[[mechanism]] entry 2: sample_rate=1.5 is invalid"),
        ("[[mechanism]]\nnoise_multiplier = 1.0\nsample_rate = 0.1\n", "entry 1 is invalid: missing field(s) ['steps']"),
        ("[[mechanism]]\nnoise_multiplier = 1.0\nsample_rate = 0.1\nsteps = 5\nclip = 1\n", "unknown field(s) ['clip']"),
        ("[[mechanism]]\nnoise_multiplier = 0\nsample_rate = 0.1\nsteps = 5\n", "entry 1: noise_multiplier=0 is invalid"),
        ("[[mechanism]]\nnoise_multiplier = 1\nsample_rate = 0.1\nsteps = 2.5\n", "entry 1: steps=2.5 is invalid"),
        ("mechanism = 3\n", "expected one or more [[mechanism]] tables"),
        ("[[mechanism]\n", "a TOML file"),
    ],
)
def test_epsilon_history_errors_name_the_entry_and_field(tmp_path: Path, text: str, named: str) -> None:
    history = tmp_path / "history.toml"
    history.write_text(text)
    code, output = budget("epsilon", "--history", str(history))
    assert code == 2 and named in " ".join(output.split()), output
    code, output = budget("epsilon", "--history", str(history), "--steps", "3")
    assert code == 2 and "exclude each other" in output


def test_plan_for_client_level_says_what_it_computes() -> None:
    code, output = budget("plan", "--target-epsilon", "3", "--delta", "1e-5", "--rounds", "20", "--cohort-size", "10",
                          "--population", "200", "--json", "--tolerance", "0.05")
    assert code == 0, output
    plan = json.loads(output)
    assert "lower bound on the noise a distributed-Skellam run needs" in plan["caveat"]
    assert "continuous-Gaussian model" in plan["schedule"]


# ------------------------------------------------------------------ resumed runs: segments


def write_resumed_run(out: Path, resume_after: int = 2) -> list[str]:
    """A run whose ledger was continued after round ``resume_after`` by a second run (a new key)."""
    out.mkdir(parents=True)
    tracker, metrics = BudgetTracker(DELTA), []
    ledger = Ledger(out / "ledger.jsonl")
    fingerprints = [ledger.fingerprint]
    for r in range(1, ROUNDS + 1):
        if r == resume_after + 1:
            ledger = Ledger.resume(out / "ledger.jsonl")
            fingerprints.append(ledger.fingerprint)
        ledger.append(round_records(r))
        worst = tracker.add(round_records(r)).worst()
        metrics.append({"method": "la-lora", "round": r, "epsilon": worst.prv.upper, "delta": DELTA, "epsilon_rdp": worst.rdp})
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    return fingerprints


def test_verify_pins_every_segment_of_a_resumed_ledger(tmp_path: Path) -> None:
    fingerprints = write_resumed_run(tmp_path / "resumed")
    code, output = budget("verify", str(tmp_path / "resumed"), "--fingerprint", fingerprints[0], "--fingerprint", fingerprints[1])
    assert code == 0, output
    assert f"segment 1 key fingerprint {fingerprints[0]} (pinned)" in output
    assert f"segment 2 key fingerprint {fingerprints[1]} (pinned)" in output
    code, output = budget("verify", str(tmp_path / "resumed"), "--fingerprint", fingerprints[1])
    assert code == 1 and "not pinned: segment 2" in output and "not in the order" in output
    code, output = budget("verify", str(tmp_path / "resumed"), "--fingerprint", fingerprints[0], "--fingerprint", fingerprints[1],
                          "--fingerprint", fingerprints[1])
    assert code == 1 and "segment 3 (pinned" in output and "missing" in output


def test_verify_names_a_removed_last_segment(tmp_path: Path) -> None:
    """Roll a resumed ledger back to its first segment (its lines, key and head put back)."""
    out = tmp_path / "rolled"
    out.mkdir()
    ledger = Ledger(out / "ledger.jsonl")
    for r in (1, 2):
        ledger.append(round_records(r))
    kept = {name: (out / name).read_bytes() for name in ("ledger.jsonl", "ledger.pub", "ledger.sig")}
    second = Ledger.resume(out / "ledger.jsonl")
    second.append(round_records(3))
    for name, data in kept.items():
        (out / name).write_bytes(data)
    code, output = budget("verify", str(out), "--fingerprint", ledger.fingerprint, "--fingerprint", second.fingerprint)
    assert code == 1 and f"segment 2 (pinned {second.fingerprint}) missing" in output
