"""`fedsim attack`: one row per scenario and threat model, exit 0 iff every verdict is the documented one."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import cli.attack
from cli.app import app
from fedsim.attacks.registry import (
    BROKEN,
    HOLDS,
    SCENARIOS,
    THREAT_MODELS,
    AttackResult,
)


def attack(*args: str):
    return CliRunner().invoke(app, ["attack", *args])


def test_all_json_lists_every_scenario_and_threat_model_with_the_expected_verdicts() -> None:
    result = attack("all", "--json")
    rows = json.loads(result.stdout)
    assert [(r["scenario"], r["threat_model"]) for r in rows] == [(s.name, m) for s in SCENARIOS for m in THREAT_MODELS]
    wrong = [f"{r['scenario']}/{r['threat_model']}: {r['verdict']} ({r['figure']})" for r in rows if r["verdict"] != r["expected"]]
    assert wrong == [] and result.exit_code == 0, wrong
    assert all(r["figure"] and r["explanation"] for r in rows)


def test_unknown_scenario_exits_2_naming_the_allowed_ones() -> None:
    result = attack("guess-the-key")
    assert result.exit_code == 2
    assert "SCENARIO='guess-the-key' is invalid" in result.output
    for s in SCENARIOS:
        assert s.name in result.output


def test_bad_options_exit_2_naming_the_option() -> None:
    result = attack("replay", "--threat-model", "paranoid")
    assert result.exit_code == 2 and "--threat-model='paranoid' is invalid" in result.output
    result = attack("replay", "--clients", "1000")
    assert result.exit_code == 2 and "--clients=1000 is invalid: expected an int in [4, 32] for replay" in result.output


def test_one_scenario_prints_a_table_row_per_threat_model() -> None:
    result = attack("both-shares")
    assert result.exit_code == 0, result.output
    assert result.output.count("both-shares") >= 2 and "HOLDS" in result.output
    assert "2 of 2 verdicts match the documented expectation" in result.output


def test_a_verdict_other_than_the_documented_one_exits_1(monkeypatch) -> None:
    monkeypatch.setattr(cli.attack, "run_scenario", lambda name, model, **_: AttackResult(name, model, BROKEN, "f", "e"))
    result = attack("replay", "--threat-model", "active", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)[0] | {"verdict": BROKEN, "expected": HOLDS} == json.loads(result.stdout)[0]


def test_a_scenario_that_fails_is_an_error_row_and_exit_1(monkeypatch) -> None:
    def boom(name, model, **_):
        raise RuntimeError("the protocol changed under the scenario")

    monkeypatch.setattr(cli.attack, "run_scenario", boom)
    result = attack("replay", "--threat-model", "semi-honest", "--json")
    assert result.exit_code == 1
    (row,) = json.loads(result.stdout)
    assert row["verdict"] == "ERROR" and "RuntimeError: the protocol changed" in row["figure"]


def test_help_teaches_the_scenarios_the_by_design_breaks_and_the_exit_codes() -> None:
    result = attack("--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "BROKEN under semi-honest is by design for dropout-lie and key-substitution" in text
    assert "BROKEN under active is by design for false-accusation" in text
    assert "Exit codes: 0 when every verdict equals the documented expectation" in text
    for s in SCENARIOS:
        assert s.name in text
