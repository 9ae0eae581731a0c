"""metrics.jsonl, summary.json and config.json carry a format version; readers refuse one they do not know."""

from __future__ import annotations

import json

import pytest

from fedsim.config import ConfigError, RunConfig, config_from_json
from fedsim.events import MethodSummary, RoundMetrics
from fedsim.rundir import CONFIG_FORMAT_VERSION, METRICS_FORMAT_VERSION, SUMMARY_FORMAT_VERSION


def test_every_persisted_record_carries_its_format_version():
    row = RoundMetrics("la-lora", 1, None, None, 1.0, 1.2, 1e-5, 4, 3.0)
    summary = MethodSummary("la-lora", 1, 0.1, 0.2, 1.0, 1.0, "prv", 1.2, None, 1e-5, "runs/x", "ab" * 32, 3.0)
    assert row.to_dict()["format_version"] == METRICS_FORMAT_VERSION == 1
    assert summary.to_dict()["format_version"] == SUMMARY_FORMAT_VERSION == 1
    assert json.loads(RunConfig().to_json())["format_version"] == CONFIG_FORMAT_VERSION == 1


def test_config_json_round_trips_and_reads_a_file_written_before_versions():
    config = RunConfig(rounds=3, methods=("dp-lora", "deer"))
    assert config_from_json(config.to_json()) == config
    unversioned = {k: v for k, v in json.loads(config.to_json()).items() if k != "format_version"}
    assert config_from_json(json.dumps(unversioned)) == config


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_config_json_of_an_unknown_version_is_refused(version):
    data = {**json.loads(RunConfig().to_json()), "format_version": version}
    with pytest.raises(ConfigError, match=r"format_version=.* is invalid: expected 1 \(a config.json this fedsim can read\)"):
        config_from_json(json.dumps(data))
