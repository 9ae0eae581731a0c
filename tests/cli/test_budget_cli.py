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
    assert got["lower"] <= exact <= got["upper"] and got["upper"] - exact < 0.02
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
