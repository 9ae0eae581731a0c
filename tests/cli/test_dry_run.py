"""`fedsim run --dry-run`: the resolved configuration and the secure sum it plans, as one JSON
object on stdout; exit 2 with the usual one-line error for a bad config; nothing started."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.app import app
from fedsim.config import RunConfig, config_from_json
from fedsim.errors import BAD_INPUT
from fedsim.secure_sum.config import GUARD_BITS
from secagg.encoding import FixedPointCodec
from secagg.params import choose_secagg_params
from tests.support.fedsim_cli import fedsim, result_json


def refuse(*_args, **_kwargs):
    raise AssertionError("--dry-run must not get here")


@pytest.fixture
def dry(monkeypatch):
    """`fedsim run ARGS --dry-run` in this process; starting a job or loading data fails the test."""
    monkeypatch.setattr("cli.run.start_job", refuse)
    monkeypatch.setattr("fedsim.preflight.check_data", refuse)
    monkeypatch.setattr("fedsim.preflight.load_dataset", refuse)
    monkeypatch.setattr("fedsim.preflight.calibrate_noise", refuse)

    def invoke(*args: str):
        return CliRunner().invoke(app, ["run", *args, "--dry-run"])

    return invoke


def report(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_default_job_resolves_as_json_on_stdout():
    """The real entry point: t = 3 for the bundled 4-client job, and the config as config.json has it."""
    completed = fedsim("run", "--dry-run", timeout=120)
    out = result_json(completed)
    assert "error" not in completed.stderr
    assert out["dry_run"] is True and out["notes"] == []
    assert config_from_json(json.dumps(out["config"])) == RunConfig()
    assert out["secure_sum"] == {
        "cohort": 4, "cohort_rule": "all", "cohort_size_expected": False, "graph": "full", "threshold": 3,
        "neighbours": None, "threat_model": "semi-honest", "consistency_check": False, "max_dropout": 0.1,
        "dropout_rate": 0.0, "collusion": 0, "max_abort_probability": 2.0**-20, "modulus_bits": 32,
        "frac_bits": FixedPointCodec(1.0, 4, 32, guard_bits=GUARD_BITS).frac_bits,
    }


def test_a_bad_config_exits_2_with_the_error_line_and_prints_nothing():
    """The CLI bug: this used to blame secagg_threshold=None (with 2 colluders)."""
    completed = fedsim(
        "run", "--dry-run", "--clients", "2", "--population", "20", "--secagg-graph", "sparse",
        "--secagg-neighbours", "2", "--secagg-collusion", "1", timeout=120,
    )
    assert completed.returncode == BAD_INPUT and completed.stdout == ""
    line = " ".join(completed.stderr.split())
    assert line.startswith("error: secagg_neighbours=2 is invalid:"), line
    assert "neighbours=2 is too small" in line and "the smallest safe neighbours is 8" in line
    assert "secagg_threshold" not in line and "Traceback" not in line


def test_nothing_is_started_or_loaded_and_the_run_dir_is_not_made(dry, tmp_path):
    out = tmp_path / "run"
    result = dry("--run-dir", str(out), "--target-epsilon", "3", "--dataset", "csv:/no/such.csv")
    assert report(result)["config"]["run_dir"] == str(out)
    assert not out.exists()
    assert any("target_epsilon" in note for note in report(result)["notes"])


def test_a_used_run_dir_is_refused(dry, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = dry("--run-dir", str(tmp_path))
    assert result.exit_code == BAD_INPUT and "expected a new or empty directory" in result.output


def test_a_fixed_cohort_of_a_population_is_sized_sparse(dry):
    out = report(dry("--clients", "2", "--population", "1000", "--cohort", "fixed", "--cohort-size", "100",
                     "--secagg-graph", "sparse"))
    t, k = choose_secagg_params(100, 0.0, 0, "sparse")
    assert k is not None and k > 2  # never the cycle
    assert {key: out["secure_sum"][key] for key in ("cohort", "graph", "threshold", "neighbours")} == {
        "cohort": 100, "graph": "sparse", "threshold": t, "neighbours": k}


def test_a_poisson_cohort_is_shown_at_its_expected_size(dry):
    out = report(dry("--clients", "2", "--population", "200", "--cohort", "poisson", "--cohort-rate", "0.5"))
    assert out["secure_sum"]["cohort"] == 100 and out["secure_sum"]["cohort_size_expected"] is True
    assert any("expected size 100" in note for note in out["notes"])


def test_the_active_threat_model_resolves_its_threshold_and_consistency_check(dry):
    out = report(dry("--clients", "6", "--secagg-threat-model", "active", "--secagg-collusion", "1"))
    secure = out["secure_sum"]
    assert (secure["threshold"], secure["threat_model"], secure["consistency_check"]) == (4, "active", True)
    assert out["config"]["secagg_consistency_check"] is True and out["config"]["secagg_threat_model"] == "active"


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (("--secagg-threshold", "1"), "error: secagg_threshold=1 is invalid"),
        (("--clients", "8", "--secagg-threshold", "2", "--secagg-collusion", "1"), "error: secagg_threshold=2 is invalid"),
        (("--secagg-max-dropout", "0.7"), "error: secagg_max_dropout=0.7 is invalid: expected a fraction in [0, 0.5]"),
        (("--secagg-threat-model", "evil"), "error: secagg_threat_model='evil' is invalid"),
        (("--secagg-threat-model", "active", "--no-secagg-consistency-check"), "error: secagg_consistency_check=False is invalid"),
    ],
)
def test_bad_values_exit_2_naming_the_field(dry, args, start):
    result = dry(*args)
    assert result.exit_code == BAD_INPUT
    assert " ".join(result.output.split()).startswith(start), result.output
    assert result.stdout == ""


TINY_VIT = (
    'dataset = "digits"\nmodel = "vit_tiny_patch16_224"\npretrained = false\nimg_size = 16\nlimit = 200\n'
    "[model_kwargs]\npatch_size = 4\ndepth = 1\nembed_dim = 16\nnum_heads = 2\n"
)


def test_client_level_dp_shows_the_skellam_mechanism_of_every_phase(monkeypatch, tmp_path):
    """--dry-run sizes the Skellam code for each phase's real update (it builds the model)."""
    from fedsim.dp.skellam import skellam_params

    monkeypatch.setattr("cli.run.start_job", refuse)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_VIT)
    result = CliRunner().invoke(app, ["run", "-c", str(config), "-m", "dp-lora,deer", "--client-sigma", "0.7", "--dry-run"])
    plan = report(result)["secure_sum"]
    assert "frac_bits" not in plan  # no fixed-point code under client-level DP
    phases = plan["skellam"]
    assert [len(phases["dp-lora"]), len(phases["deer"])] == [1, 2]
    for shown in phases["dp-lora"] + phases["deer"]:
        dim, padded = shown["dim"], shown["padded_dim"]
        assert padded >= dim > padded // 2 and padded & (padded - 1) == 0
        expected = skellam_params(dim, 1.0, 0.7, plan["cohort"], plan["modulus_bits"])
        assert shown["gamma"] == expected.gamma and shown["mu"] == expected.mu
        assert shown["l2_sensitivity"] >= shown["gamma"] * 1.0  # rounding never lowers the bound
        assert 1.0 <= shown["rounding_inflation"] <= 1.01
        assert shown["wrap_probability_per_coordinate"] <= 1e-12
        assert shown["mu"] == pytest.approx((shown["gamma"] * 0.7 * 1.0) ** 2 / 2)


def test_client_level_noise_the_ring_cannot_hold_is_refused_naming_the_field(monkeypatch, tmp_path):
    monkeypatch.setattr("cli.run.start_job", refuse)
    config = tmp_path / "wide.toml"  # ~200k LoRA values: at z = 1000 a 32-bit ring leaves too coarse a scale
    config.write_text(TINY_VIT.replace("depth = 1\nembed_dim = 16\nnum_heads = 2", "depth = 2\nembed_dim = 256\nnum_heads = 4"))
    args = ["run", "-c", str(config), "--lora-rank", "64", "--client-sigma", "1000", "--dry-run"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == BAD_INPUT, result.output
    assert "is invalid" in result.output and "Skellam sum" in result.output
    assert CliRunner().invoke(app, [*args, "--secagg-modulus-bits", "64"]).exit_code == 0  # the ring the error suggests
