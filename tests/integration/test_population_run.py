"""End to end: virtual clients over processes, cohorts, client-level DP, rolora and deer."""

from __future__ import annotations

import json

import pytest

from tests.support.fedsim_cli import fedsim, result_json


@pytest.fixture(scope="module")
def population_run(tmp_path_factory):
    """8 virtual clients on 2 processes, fixed cohorts of 4, client-level DP, two multi-phase methods."""
    run_dir = tmp_path_factory.mktemp("runs") / "population"
    config = run_dir.parent / "population.toml"
    config.write_text(
        'methods = "rolora,deer"\nnum_clients = 2\npopulation = 8\ncohort = "fixed"\ncohort_size = 4\n'
        "client_noise_multiplier = 0.8\nclient_clip = 0.5\nrounds = 2\nlocal_steps = 2\nlimit = 320\n"
        "batch_size = 16\neval_every = 2\n"
    )
    completed = fedsim("run", "--config", str(config), "--run-dir", str(run_dir))
    return run_dir, result_json(completed)


def ledger(run_dir, method):
    return [json.loads(line) for line in (run_dir / method / "ledger.jsonl").read_text().splitlines()]


def test_each_round_trains_a_cohort_of_four_distinct_virtual_clients(population_run):
    run_dir, _ = population_run
    for method, phases in (("rolora", 1), ("deer", 2)):
        records = [r for r in ledger(run_dir, method) if r["client"] is not None]
        for round_idx in (1, 2):
            members = [r["client"] for r in records if r["round"] == round_idx]
            assert len(members) == 4 * phases and len(set(members)) == 4, (method, members)
            assert all(1 <= c <= 8 for c in members)
            # deer splits the round's 2 local steps over its two phases
            assert all(r["mechanism"]["steps"] == 2 // phases for r in records if r["round"] == round_idx)


def test_every_secure_sum_records_a_skellam_release_naming_its_participants(population_run):
    run_dir, result = population_run
    for method, phases in (("rolora", 1), ("deer", 2)):
        records = ledger(run_dir, method)
        population = [r for r in records if r["client"] is None]
        assert len(population) == 2 * phases  # one release per secure sum
        for r in population:
            m = r["mechanism"]
            assert m["name"] == "distributed_skellam" and m["sampling"] == "fixed_size"
            assert m["cohort_size"] == 4 and m["population"] == 8
            # who reached the sum: exactly that round's cohort (no dropouts), as its sample-level records say
            trained = sorted({x["client"] for x in records if x["client"] is not None and x["round"] == r["round"]})
            assert m["participants"] == trained
            assert m["l2_sensitivity"] >= 1.0 and m["mu"] > 0
    for summary in result["results"]:
        server, observers = summary["client_level_epsilon_server"], summary["client_level_epsilon_observers"]
        assert server > 0 and summary["epsilon"] > 0
        assert observers == server  # fixed-size cohorts: no amplification claimed against anyone
        assert summary["client_level_epsilon"] == server


def test_the_population_run_verifies(population_run):
    run_dir, result = population_run
    for summary in result["results"]:
        checked = fedsim("budget", "verify", summary["run_dir"], "--fingerprint", summary["ledger_fingerprint"])
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compare_writes_csv_markdown_and_plot(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text("num_clients = 2\nrounds = 1\nlocal_steps = 2\nlimit = 160\nbatch_size = 16\neval_every = 1\n")
    out = tmp_path / "cmp"
    completed = fedsim("compare", "-m", "la-lora,rolora", "-e", "4", "-s", "0", "-c", str(config), "-o", str(out))
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = json.loads(completed.stdout.strip().splitlines()[-1])["rows"]
    assert [r["method"] for r in rows] == ["la-lora", "rolora"]
    assert all(r["epsilon"] <= 4.0 and r["target_epsilon"] == 4.0 for r in rows)  # calibrated, same σ for both
    assert rows[0]["noise_multiplier"] == rows[1]["noise_multiplier"]
    table = (out / "results.md").read_text()
    assert "| la-lora |" in table and "ε = 4" in table
    assert (out / "results.csv").read_text().count("\n") == 3
    assert (out / "accuracy_vs_epsilon.png").stat().st_size > 5_000
