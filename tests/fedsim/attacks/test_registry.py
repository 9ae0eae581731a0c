"""The scenario table: one source for the CLI, the tests and the README."""

from __future__ import annotations

from fedsim.attacks.registry import (
    BROKEN,
    HOLDS,
    SCENARIOS,
    THREAT_MODELS,
    AttackResult,
    expected_verdict,
)
from tests.support.isolation import loaded_modules_after_import

ISSUE_SCENARIOS = {
    "dropout-lie", "key-substitution", "both-shares", "replay", "partial-sum", "bad-ciphertext", "bad-share",
    "out-of-range-input", "oversize-message", "transcript-distinguisher",
}


def test_threat_models_are_secaggs() -> None:
    from secagg.params import THREAT_MODELS as SECAGG_MODELS

    assert THREAT_MODELS is SECAGG_MODELS


def test_every_scenario_of_the_issue_is_listed_once_with_both_threat_models() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names)) and set(names) >= ISSUE_SCENARIOS
    for s in SCENARIOS:
        assert s.threat_models == THREAT_MODELS, s.name
        assert {s.expected_under(m) for m in THREAT_MODELS} <= {HOLDS, BROKEN}
        assert s.summary and s.min_clients <= s.default_clients <= s.max_clients


def test_the_breaks_by_design_are_the_documented_ones() -> None:
    """The server's deviations under semi-honest; unverifiable accusations under active."""
    broken = {(s.name, m) for s in SCENARIOS for m in THREAT_MODELS if s.expected_under(m) == BROKEN}
    assert broken == {("dropout-lie", "semi-honest"), ("key-substitution", "semi-honest"), ("false-accusation", "active")}


def test_a_row_carries_its_expected_verdict() -> None:
    row = AttackResult("replay", "active", HOLDS, "0 of 3 replays accepted", "why").to_dict()
    assert row == {
        "scenario": "replay", "threat_model": "active", "verdict": HOLDS, "expected": expected_verdict("replay", "active"),
        "figure": "0 of 3 replays accepted", "explanation": "why",
    }


def test_the_registry_and_the_cli_load_no_torch() -> None:
    """`fedsim --help` lists the scenarios without importing torch (a scenario's code loads it when it runs)."""
    assert loaded_modules_after_import("fedsim.attacks.registry", ("torch", "numpy", "secagg.encoding")) == []


def test_the_readme_table_has_one_row_per_scenario() -> None:
    from fedsim.attacks.registry import expected_table

    lines = expected_table().splitlines()
    assert len(lines) == 2 + len(SCENARIOS)
    assert lines[2].startswith("| `dropout-lie` | BROKEN | HOLDS |")


def test_the_readme_shows_the_registry_table_as_it_is() -> None:
    """The README's expected verdicts are the registry's, word for word (one source)."""
    from fedsim.attacks.registry import expected_table
    from tests.support import REPO_ROOT

    assert expected_table() in (REPO_ROOT / "README.md").read_text()
