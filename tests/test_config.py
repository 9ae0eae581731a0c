"""Config validation: bad values name the field, the value and the allowed range."""

import pytest

from fedsim.config import ConfigError, RunConfig, build_config, config_from_json, load_config_file


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
    from fedsim.preflight import preflight

    with pytest.raises(ConfigError, match="dataset.*missing.csv"):
        preflight(build_config(dataset=f"csv:{tmp_path / 'missing.csv'}"))
    with pytest.raises(ConfigError, match="model.*timm"):
        preflight(build_config(dataset="digits", model="not_a_model_v9"))
    with pytest.raises(ConfigError, match="secagg_clip_range"):
        preflight(build_config(secagg_clip_range=1e4, num_clients=1024, limit=None))
    with pytest.raises(ConfigError, match="num_clients"):
        preflight(build_config(limit=10, num_clients=50))
