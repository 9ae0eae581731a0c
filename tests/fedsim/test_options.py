"""The options table: one row per RunConfig field drives validation and `fedsim run`'s options."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.run import option_help, run_command
from fedsim.config import ConfigError, RunConfig, build_config
from fedsim.options import ANY, FIELD_OPTIONS

ROWS = {option.field: option for option in FIELD_OPTIONS}


def test_every_field_has_exactly_one_row():
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    assert sorted(ROWS) == sorted(fields)
    assert len(ROWS) == len(FIELD_OPTIONS)  # no field twice


def test_run_takes_one_option_per_row_with_help_and_the_six_others():
    params = inspect.signature(run_command).parameters
    with_help = [o.field for o in FIELD_OPTIONS if o.help]
    assert [p for p in params if p in ROWS] == with_help
    assert set(params) - set(ROWS) == {"config_file", "drop", "dry_run", "list_presets", "resume", "verbose"}
    for field in ("model_kwargs", "lora_alpha", "dropout_schedule"):  # config-file only
        assert field not in params


def test_help_lists_every_option_with_its_default_and_allowed_values():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "2000"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for option in FIELD_OPTIONS:
        if not option.help:
            continue
        for flag in option.flags or ("--" + option.field.replace("_", "-"),):
            assert flag.split("/")[0] in text, flag
        if option.show_default:
            assert f"(default: {option_help(option).split('(default: ')[1].split(')')[0]})" in text
    assert "Communication rounds. (default: 8) Allowed: an integer in [1, 100000]." in text
    assert "--clients" in text and "--sigma" in text and "--secagg-timeout" in text
    assert "--secagg-threat-model" in text and "--secagg-max-dropout" in text and "--dry-run" in text


def test_the_help_states_what_each_threat_model_does_not_guarantee():
    threat = ROWS["secagg_threat_model"].help
    assert "NOT protected against a server that lies about who dropped or substitutes public keys" in threat
    assert "Ed25519" in threat and "rendezvous store, not the server" in threat and "t > (n + c)/2" in threat
    check = ROWS["secagg_consistency_check"].help
    assert "a server that lies about who dropped is caught" not in check  # only true with a PKI
    assert "does not catch a server that lies about who dropped" in check and "active" in check
    assert "real (not injected) dropouts" in ROWS["secagg_max_dropout"].help


BAD_VALUES = [
    ("rounds", 0), ("rounds", 100_001), ("rounds", 2.5), ("rounds", True), ("local_steps", 0),
    ("img_size", 7), ("max_length", 3), ("limit", 9), ("num_clients", 0), ("cohort", "some"),
    ("cohort_rate", 0.0), ("cohort_rate", 1.5), ("client_noise_multiplier", -1.0), ("client_clip", 0.0),
    ("partition", "random"), ("dirichlet_alpha", 0.0), ("lora_rank", 0), ("lora_alpha", -1.0),
    ("optimizer", "adam"), ("lr", 0.0), ("head_lr", 11.0), ("b_lr_ratio", 0.0), ("smoothing", -1.0),
    ("batch_size", 0), ("noise_multiplier", 0.0), ("max_grad_norm", float("nan")), ("delta", 1.0),
    ("target_epsilon", 0.0), ("secagg_clip_range", 0.0), ("secagg_threshold", 0), ("secagg_threshold", 1.5),
    ("secagg_graph", "ring"), ("secagg_neighbours", 3), ("secagg_modulus_bits", 16), ("secagg_collusion", -1),
    ("secagg_collusion", 1.0), ("secagg_max_abort_probability", 1.0), ("secagg_timeout_s", 0.0),
    ("secagg_threat_model", "malicious"), ("secagg_max_dropout", 0.51), ("secagg_max_dropout", True),
    ("secagg_consistency_check", "yes"), ("dropout_rate", 1.0), ("dropout_stages", ("Nope",)),
    ("seed", -1), ("eval_every", 0), ("threads_per_process", 0), ("timeout_s", 5.0), ("methods", ("sgd-lora",)),
    ("model", ""), ("pretrained", "yes"),
    ("preset", "swin"), ("checkpoint", ""), ("local_epochs", 0.0), ("local_epochs", 1001.0), ("lr_decay", 0.0),
    ("lr_decay", 1.01), ("momentum", -0.1), ("momentum", 1.0), ("smoothing_mode", "both"), ("lora_targets", ()),
    ("lora_targets", ("attn.qkv", "attn.qkv")), ("lora_targets", ("",)), ("device", "tpu"), ("device", "cuda:0"),
]


@pytest.mark.parametrize("field, value", BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_a_bad_value_is_refused_with_the_rows_allowed_text(field, value):
    allowed = ROWS[field].rule.allowed
    assert ROWS[field].rule is not ANY
    with pytest.raises(ConfigError) as caught:
        build_config({}, **{field: value})
    assert caught.value.field_name == field
    assert str(caught.value) == f"{field}={caught.value.value!r} is invalid: expected {allowed}"


def test_the_defaults_pass_every_rule():
    defaults = RunConfig()
    for option in FIELD_OPTIONS:
        assert option.rule.check(getattr(defaults, option.field)), option.field


def test_count_or_fraction_options_parse_from_text():
    config = build_config({}, secagg_threshold="3", secagg_collusion="0.2")
    assert (config.secagg_threshold, config.secagg_collusion) == (3, 0.2)
    with pytest.raises(ConfigError, match="secagg_collusion='two' is invalid"):
        build_config({}, secagg_collusion="two")


def test_the_device_option_says_how_ranks_share_gpus():
    help_text = ROWS["device"].help
    assert help_text.startswith("cpu, cuda or auto; with more client processes than GPUs, rank r uses cuda:(LOCAL_RANK mod device_count); memory is not capped per process")
    assert RunConfig().device == "auto"


def test_preset_and_the_new_fields_are_run_options():
    params = inspect.signature(run_command).parameters
    for field in ("preset", "checkpoint", "local_epochs", "lr_decay", "momentum", "smoothing_mode", "lora_targets", "device"):
        assert field in params, field
    config = build_config({}, lora_targets="query, value", local_epochs=2.0)
    assert config.lora_targets == ("query", "value") and config.to_dict()["lora_targets"] == ["query", "value"]
