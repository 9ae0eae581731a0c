"""Config validation: bad values name the field, the value and the allowed range."""

import pytest

from fedsim.config import ConfigError, RunConfig, build_config, config_from_json, load_config_file
from fedsim.preflight import preflight


def test_defaults_are_valid_and_round_trip_through_json():
    config = RunConfig()
    assert config_from_json(config.to_json()) == config
    assert config.world_size == config.num_clients + 1


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("num_clients", 0, "[1, 1024]"),
        ("noise_multiplier", -1.0, "(0, 1000]"),
        ("delta", 1.0, "(0, 1)"),
        ("methods", "la-lora,bogus", "la-lora"),
        ("partition", "shards", "iid"),
        ("batch_size", 2.5, "integer"),
        ("dataset", "imagenet", "csv:PATH"),
    ],
)
def test_bad_values_name_field_value_and_range(field, value, fragment):
    with pytest.raises(ConfigError) as info:
        build_config(**{field: value})
    message = str(info.value)
    assert field in message and fragment in message
    assert info.value.field_name in (field, "methods", "dataset")


def test_unknown_keys_are_rejected(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('rounds = 3\nnoise = 2.0\n')
    with pytest.raises(ConfigError, match="noise"):
        build_config(load_config_file(path))


def test_file_values_are_overridden_by_options(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('rounds = 3\nmethods = ["dp-lora", "ffa-lora"]\n')
    config = build_config(load_config_file(path), rounds=5)
    assert config.rounds == 5 and config.methods == ("dp-lora", "ffa-lora")


def test_image_dataset_needs_a_timm_model():
    with pytest.raises(ConfigError, match="model"):
        build_config(dataset="digits")


def test_preflight_names_what_cannot_work(tmp_path):

    with pytest.raises(ConfigError, match="dataset.*missing.csv"):
        preflight(build_config(dataset=f"csv:{tmp_path / 'missing.csv'}"))
    with pytest.raises(ConfigError, match="model.*timm"):
        preflight(build_config(dataset="digits", model="not_a_model_v9"))
    with pytest.raises(ConfigError, match="secagg_clip_range"):
        preflight(build_config(secagg_clip_range=1e4, num_clients=1024, limit=None))
    with pytest.raises(ConfigError, match="num_clients"):
        preflight(build_config(limit=10, num_clients=50))


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("secagg_graph", "ring", "'full', 'sparse'"),
        ("secagg_modulus_bits", 48, "(32, 64)"),
        ("secagg_neighbours", 3, "even integer"),
        ("secagg_threshold", 1.5, "fraction in (0, 1]"),
        ("secagg_collusion", -1, "count >= 0"),
        ("secagg_timeout_s", 0.0, "[0.1, 86400]"),
        ("secagg_threat_model", "malicious", "'semi-honest', 'active'"),
        ("secagg_max_dropout", 0.6, "[0, 0.5]"),
        ("secagg_max_dropout", -0.1, "[0, 0.5]"),
        ("dropout_rate", 1.0, "[0, 1)"),
        ("dropout_stages", "ShareKeys,Sharekeys", "AdvertiseKeys"),
        ("dropout_schedule", {"0": {"ShareKeys": [1]}}, "rounds >= 1"),
        ("dropout_schedule", {"2": {"Unmask": [1]}}, "stages from"),
    ],
)
def test_bad_secure_aggregation_values_name_field_value_and_range(field, value, fragment):
    with pytest.raises(ConfigError) as info:
        build_config(**{field: value})
    assert info.value.field_name == field and fragment in str(info.value)


def test_neighbours_need_the_sparse_graph():
    with pytest.raises(ConfigError, match="secagg_neighbours.*sparse"):
        build_config(secagg_neighbours=4)
    assert build_config(secagg_graph="sparse", secagg_neighbours=4).secagg_neighbours == 4


def test_dropout_schedule_from_toml_and_drop_options_merge_and_round_trip(tmp_path):
    from fedsim.config import parse_count_or_fraction, parse_drops

    path = tmp_path / "job.toml"
    path.write_text('dropout_rate = 0.05\ndropout_stages = ["ShareKeys"]\n[dropout_schedule.2]\nShareKeys = [3, 1]\n')
    values = load_config_file(path)
    schedule = parse_drops(["2:ShareKeys:2", "4:Unmasking:1,5"], values.pop("dropout_schedule"))
    config = build_config(values, dropout_schedule=schedule, secagg_threshold=parse_count_or_fraction("secagg_threshold", "0.6"))
    assert config.dropout_schedule == {2: {"ShareKeys": (1, 2, 3)}, 4: {"Unmasking": (1, 5)}}
    assert config.dropout_stages == ("ShareKeys",) and config.secagg_threshold == 0.6
    assert config_from_json(config.to_json()) == config
    assert config.secagg_dropout_probability == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="drop.*ROUND:STAGE:CLIENT"):
        parse_drops(["2-ShareKeys-1"])
    with pytest.raises(ConfigError, match="secagg_threshold"):
        parse_count_or_fraction("secagg_threshold", "most")


def test_preflight_checks_secure_aggregation_with_the_protocols_checker():

    with pytest.raises(ConfigError, match="secagg_threshold=2 .*collusion"):
        preflight(build_config(num_clients=6, secagg_threshold=2, secagg_collusion=3))
    with pytest.raises(ConfigError, match="secagg_threshold.*fewer than t holders survive"):
        preflight(build_config(num_clients=6, secagg_threshold=6, dropout_rate=0.1))
    with pytest.raises(ConfigError, match="num_clients=1 .*at least 2 clients"):
        preflight(build_config(num_clients=1))
    with pytest.raises(ConfigError, match="dropout_schedule.*client ids in \\[1, 4\\]"):
        preflight(build_config(dropout_schedule={1: {"ShareKeys": [9]}}))
    preflight(build_config(num_clients=6, secagg_graph="sparse", secagg_neighbours=4, secagg_threshold=3))


def test_preflight_blames_the_degree_not_an_unset_threshold():
    """The bug: `--secagg-graph sparse --secagg-neighbours 2 --secagg-collusion 2` blamed secagg_threshold=None."""
    for collusion in (1, 2):
        with pytest.raises(ConfigError, match=r"^secagg_neighbours=2 is invalid: .*neighbours=2 is too small: .*smallest safe neighbours is \d+") as info:
            preflight(build_config(secagg_graph="sparse", secagg_neighbours=2, secagg_collusion=collusion, num_clients=2, population=20))
        assert info.value.field_name == "secagg_neighbours"
    with pytest.raises(ConfigError, match=r"^secagg_threshold=1 is invalid: .*threshold=1 is too small"):
        preflight(build_config(secagg_threshold=1))


def test_threat_model_and_max_dropout_are_recorded_and_old_configs_still_load():
    import json

    config = build_config(secagg_threat_model="active", secagg_max_dropout=0.2)
    data = json.loads(config.to_json())
    assert (data["secagg_threat_model"], data["secagg_max_dropout"], data["secagg_consistency_check"]) == ("active", 0.2, True)
    assert config_from_json(config.to_json()) == config
    old = {k: v for k, v in json.loads(RunConfig().to_json()).items() if k not in ("secagg_threat_model", "secagg_max_dropout")}
    assert data["format_version"] == old["format_version"] == 1  # new fields with defaults: same version
    loaded = config_from_json(json.dumps(old))
    assert (loaded.secagg_threat_model, loaded.secagg_max_dropout, loaded.secagg_consistency_check) == ("semi-honest", 0.1, False)


def test_the_active_threat_model_turns_the_consistency_check_on_and_refuses_it_off():
    assert build_config().secagg_consistency_check is False
    assert build_config(secagg_threat_model="active").secagg_consistency_check is True
    assert build_config(secagg_consistency_check=True).secagg_consistency_check is True
    with pytest.raises(ConfigError, match="^secagg_consistency_check=False is invalid: expected true .*active") as info:
        build_config(secagg_threat_model="active", secagg_consistency_check=False)
    assert info.value.field_name == "secagg_consistency_check"


def test_the_active_threat_model_is_sized_for_two_stories():
    with pytest.raises(ConfigError, match=r"^secagg_threshold=3 is invalid: .*too small for the active threat model"):
        preflight(build_config(num_clients=6, secagg_threshold=3, secagg_threat_model="active"))
    preflight(build_config(num_clients=6, secagg_threshold=4, secagg_threat_model="active"))


def test_target_epsilon_calibrates_the_noise_before_the_run():
    from accounting import Schedule, calibrate_schedule

    config = preflight(build_config(target_epsilon=2.0, rounds=4, local_steps=3))
    plain = build_config(rounds=4, local_steps=3)
    assert config.noise_multiplier != plain.noise_multiplier and config.target_epsilon == 2.0
    # default job: 2400 examples over 4 clients, B=32 -> q = 32/600 at the smallest shard
    again = calibrate_schedule(Schedule(4, local_steps=3, sample_rate=32 / 600), 2.0, 1e-5)
    assert config.noise_multiplier == again.noise_multiplier and again.epsilon.upper <= 2.0
    assert preflight(plain) == plain  # no target: nothing changes


@pytest.mark.parametrize("value", [0, -1.0, 1e9])
def test_bad_target_epsilon_names_the_field(value):
    with pytest.raises(ConfigError, match="target_epsilon"):
        build_config(target_epsilon=value)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"population": 3}, "population"),  # fewer virtual clients than the 4 processes
        ({"cohort": "sometimes"}, "cohort"),
        ({"cohort": "poisson", "cohort_rate": 1.5}, "cohort_rate"),
        ({"cohort": "fixed", "population": 8, "cohort_size": 9}, "cohort_size"),
        ({"client_noise_multiplier": -1.0}, "client_noise_multiplier"),
        ({"client_clip": 0}, "client_clip"),
        ({"methods": "la-lora,fedavg"}, "methods"),
    ],
)
def test_population_and_client_level_fields_name_themselves(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}="):
        build_config(**overrides)


def test_preflight_partitions_over_the_population():
    with pytest.raises(ConfigError, match="population=5000"):
        preflight(build_config(population=5000, limit=100))


def test_new_fields_round_trip_through_toml_and_json(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('lora_targets = ["attn.qkv"]\nlocal_epochs = 5\noptimizer = "sgd"\nmomentum = 0.9\nlr_decay = 0.99\n'
                    'smoothing_mode = "reference"\ndevice = "cpu"\ncheckpoint = "w.pth"\n')
    config = build_config(load_config_file(path))
    assert (config.lora_targets, config.local_epochs, config.momentum, config.lr_decay) == (("attn.qkv",), 5.0, 0.9, 0.99)
    assert (config.smoothing_mode, config.device, config.checkpoint, config.preset) == ("reference", "cpu", "w.pth", None)
    assert config_from_json(config.to_json()) == config


def test_a_preset_in_a_config_file_is_its_lowest_layer(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('preset = "la-lora-roberta-mnli"\nrounds = 2\n')
    config = build_config(load_config_file(path), lr=1e-3)
    assert (config.preset, config.rounds, config.lr, config.local_steps, config.max_length) == ("la-lora-roberta-mnli", 2, 1e-3, 20, 128)
    assert build_config(load_config_file(path), preset="default").max_length == RunConfig().max_length  # an explicit preset wins
