"""`fedsim audit`: the JSON keys on a tiny config, the PNG, and bad options exit 2 naming the option."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.app import app

TINY = [
    "--method", "dp-lora", "--dataset", "digits", "--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "16",
    "--limit", "200", "--rounds", "1", "--local-steps", "2", "--batch-size", "16", "--canaries", "100",
]


def test_audit_json_has_the_bound_beside_the_accountant_and_the_control(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plot = tmp_path / "scores.png"
    result = CliRunner().invoke(app, ["audit", *TINY, "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= report["empirical_epsilon_lower"] < report["epsilon"]
    assert report["accountant"]["method"] and report["steps"] == 2 and report["canaries"] == 100
    assert report["guesses"]["correct"] <= report["guesses"]["guesses"] == report["guesses"]["k_plus"] + report["guesses"]["k_minus"]
    assert report["control"]["noise_multiplier"] == 0.0 and report["control"]["empirical_epsilon_lower"] >= 0
    assert plot.stat().st_size > 0 and report["plot"] == str(plot)


def test_bad_audit_options_exit_2_naming_the_option() -> None:
    result = CliRunner().invoke(app, ["audit", "--observer", "satellite"])
    assert result.exit_code == 2 and "--observer='satellite' is invalid" in result.output
    result = CliRunner().invoke(app, ["audit", "--canaries", "1"])
    assert result.exit_code == 2 and "--canaries=1 is invalid" in result.output
    result = CliRunner().invoke(app, ["audit", "--method", "dp-lora,la-lora", "--canaries", "10"])
    assert result.exit_code == 2 and "exactly one method" in result.output


def test_client_level_audit_json_has_a_canary_clients_bound_beside_its_epsilon_against_the_server(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["audit", "--level", "client", *TINY])  # no --client-sigma: nothing to audit
    assert result.exit_code == 2 and "--client-sigma=0.0 is invalid" in result.output
    plot = tmp_path / "clients.png"
    args = ["audit", "--level", "client", *TINY, "--lora-rank", "1", "--client-sigma", "4", "--plot", str(plot), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["level"] == "client" and report["observer"] == "server" and report["accountant"]["against"] == "server"
    assert 0 <= report["empirical_epsilon_lower"] < report["epsilon"] and report["accountant"]["sums"] == 1
    assert report["canaries"] == 100 and report["real_clients"] == 4 and report["cohort"] == 104 and report["dim"] == 15754
    assert report["control"]["noise_multiplier"] == 0.0 and report["control"]["empirical_epsilon_lower"] > 1.0
    assert plot.stat().st_size > 0 and report["plot"] == str(plot)
