"""Presets: every one resolves, validates and trains one tiny round in process; the fields they need work."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedsim.client.loop import build_trainer, hosted_shards
from fedsim.client.trainer import ClientShard
from fedsim.config import ConfigError, build_config, config_from_json, load_config_file
from fedsim.methods.registry import (
    factor_learning_rates,
    phase_steps,
    round_learning_rate,
    round_steps,
)
from fedsim.methods.smoothing import smooth_gradient
from fedsim.population import Population
from fedsim.preflight import preflight
from fedsim.presets import PRESET_NAMES, list_presets, preset_values
from fedsim.task import client_round_steps, load_task, sample_level_schedules
from fedsim.transport.vectors import flatten
from tests.support.tiny_lora import tiny_client

PAPER_PRESETS = ("la-lora-swin-b-cifar100", "la-lora-roberta-mnli", "deer-vit-b16")
CPU = torch.device("cpu")

# What makes each preset tiny: the bundled/small dataset in place of the offline path, random
# init, a tiny architecture of the same family, few records. Everything else is the preset's.
TINY = {
    "la-lora-swin-b-cifar100": {
        "dataset": "digits", "limit": 400, "img_size": 32, "pretrained": False, "local_steps": 4,
        "model_kwargs": {"window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "drop_path_rate": 0.0},
    },
    "la-lora-roberta-mnli": {
        "dataset": "wordnet-supersenses", "limit": 400, "model": "all-MiniLM-L6-v2", "pretrained": False,
        "max_length": 16, "local_steps": 4,
        "model_kwargs": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    },
    "deer-vit-b16": {
        "dataset": "digits", "limit": 400, "img_size": 32, "pretrained": False,
        "model_kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    },
    "default": {
        "limit": 400, "max_length": 16, "local_steps": 2, "pretrained": False,
        "model_kwargs": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    },
}


def test_the_issues_presets_and_the_default_are_listed():
    assert set(PRESET_NAMES) == {*PAPER_PRESETS, "default"}
    assert [p.name for p in list_presets()] == list(PRESET_NAMES)
    for preset in list_presets():
        assert preset.summary and preset.source
        assert "noise_multiplier" not in preset.values  # budgets are ε targets, never raw σ
        if preset.name != "default":
            assert preset.values["target_epsilon"] == 1.0 and preset.provide


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_resolves_validates_and_records_its_name(name):
    config = build_config(preset=name)
    assert config.preset == name
    for key, value in preset_values(name).items():
        assert getattr(config, key) == value, key
    assert config_from_json(config.to_json()) == config


def test_the_papers_setups_are_what_the_issue_lists():
    swin = build_config(preset="la-lora-swin-b-cifar100")
    assert (swin.population_size, swin.cohort, swin.cohort_size, swin.rounds, swin.local_steps, swin.batch_size) == (8, "fixed", 4, 101, 50, 16)
    assert (swin.partition, swin.dirichlet_alpha, swin.optimizer, swin.lr, swin.lr_decay) == ("dirichlet", 0.1, "adamw", 1e-4, 0.99)
    assert (swin.lora_rank, swin.lora_alpha, swin.lora_targets, swin.methods) == (16, 16.0, ("attn.qkv", "attn.proj"), ("la-lora",))
    text = build_config(preset="la-lora-roberta-mnli")
    assert (text.population_size, text.cohort_size, text.local_steps, text.batch_size, text.lr) == (20, 4, 20, 16, 2e-4)
    assert (text.lora_rank, text.lora_alpha, text.max_length, text.modality) == (8, 16.0, 128, "text")
    deer = build_config(preset="deer-vit-b16")
    assert (deer.population_size, deer.cohort, deer.dirichlet_alpha, deer.rounds, deer.local_epochs) == (12, "all", 0.1, 50, 5.0)
    assert (deer.optimizer, deer.lr, deer.momentum, deer.lora_rank, deer.lora_targets, deer.methods) == ("sgd", 0.01, 0.9, 8, ("attn.qkv",), ("deer",))


def test_options_override_a_config_file_which_overrides_the_preset(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('preset = "deer-vit-b16"\nlr = 0.05\nrounds = 7\n')
    config = build_config(load_config_file(path), rounds=3, momentum=None)
    assert (config.preset, config.lr, config.rounds, config.momentum) == ("deer-vit-b16", 0.05, 3, 0.9)
    # An explicit K replaces the preset's epochs (and the other way round).
    assert (build_config(preset="deer-vit-b16", local_steps=10).local_epochs, build_config(preset="deer-vit-b16", local_steps=10).local_steps) == (None, 10)
    assert build_config(preset="la-lora-swin-b-cifar100", local_epochs=2.0).local_epochs == 2.0
    with pytest.raises(ConfigError, match="preset=.swin. is invalid: expected None or one of"):
        build_config(preset="swin")


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_a_missing_offline_dataset_fails_preflight_naming_dataset(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preset's relative data/... path does not exist here
    with pytest.raises(ConfigError) as err:
        preflight(build_config(preset=name))
    assert err.value.field_name == "dataset" and "not found" in str(err.value)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preflight_passes_with_a_small_dataset_in_place(name):
    # Calibration (target_epsilon) is preflight's existing code, tested in test_config; unset here for time.
    config = dataclasses.replace(build_config(preset=name, **TINY[name]), target_epsilon=None)
    assert preflight(config) == config


def spy_optimizers(trainer) -> list:
    made = []
    build = trainer._optimizer

    def spy(*args):
        optimizer = build(*args)
        made.append(optimizer)
        return optimizer

    trainer._optimizer = spy
    return made


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_each_preset_trains_one_tiny_round_in_process_with_its_fields_in_effect(name):
    config = build_config(preset=name, **TINY[name])
    task = load_task(config)
    trainer = build_trainer(config, task, config.methods[0], CPU)
    shard = hosted_shards(config, task, Population(config.population_size, config.num_clients), [1])[1]
    made = spy_optimizers(trainer)
    method, factors = trainer.method, trainer.factors
    phases = method.phases(3)  # round 3: the decayed learning rate shows
    steps = client_round_steps(config, shard.num_records, len(phases))
    global_vector = flatten(trainer.params, method.all_sent_names(factors)).detach().clone()
    ran = 0
    for phase, phase_k in zip(phases, phase_steps(steps, len(phases))):
        update, report = trainer.train_phase(shard, global_vector, phase, phase_k, round_idx=3)
        assert torch.isfinite(update).all() and update.abs().sum() > 0
        ran += report.steps
    if config.local_epochs is not None:  # ceil(E·max(n, B)/B) steps per round
        assert ran == math.ceil(config.local_epochs * max(shard.num_records, config.batch_size) / config.batch_size)
    else:
        assert ran == config.local_steps
    groups = made[0].original_optimizer.param_groups
    decay = config.lr_decay**2
    rates = factor_learning_rates(method, config.lr * decay, config.head_lr * decay, config.b_lr_ratio)
    assert [g["lr"] for g in groups] == pytest.approx([rates[f] for f in sorted(method.trainable)])
    if config.optimizer == "sgd":
        assert all(g["momentum"] == config.momentum for g in groups)
    assert made[0].smoothing_mode == config.smoothing_mode
    targets = config.lora_targets or ()
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in trainer.model.named_parameters() if ".lora_A." in n}
    assert lora_modules and all(any(m.endswith("." + t) for t in targets) for m in lora_modules if targets)
    with torch.no_grad():
        *inputs, labels = shard.dataset.tensors
        logits = trainer.model(*shard.model_inputs([x[:8] for x in inputs]))
        assert torch.isfinite(torch.nn.functional.cross_entropy(logits, labels[:8]))


# --------------------------------------------------------------------------- the fields presets need


def test_round_steps_from_local_epochs():
    assert round_steps(local_steps=50, local_epochs=None, batch_size=16, num_records=10, phases=1) == 50
    assert round_steps(local_steps=6, local_epochs=1.0, batch_size=16, num_records=6250) == 391
    assert round_steps(local_steps=6, local_epochs=5.0, batch_size=128, num_records=40) == 5  # q = 1: one step an epoch
    assert round_steps(local_steps=6, local_epochs=0.1, batch_size=3, num_records=30) == 1  # not 2 by rounding
    assert round_steps(local_steps=6, local_epochs=0.1, batch_size=3, num_records=30, phases=2) == 2
    assert round_learning_rate(0.1, 0.99, 1) == 0.1 and round_learning_rate(0.1, 0.99, 3) == pytest.approx(0.1 * 0.99**2)


def test_calibration_schedules_cover_every_client_with_local_epochs():
    config = build_config(local_epochs=2.0, batch_size=10, methods="deer")
    pairs = sample_level_schedules(config, [20, 100, 100])
    assert pairs == [(0.1, 20), (0.5, 4)]  # the small shard: higher q, fewer steps; both listed
    assert sample_level_schedules(build_config(batch_size=10), [20, 100]) == [(0.5, 6)]  # fixed K: the largest q


@pytest.mark.parametrize("field, value, fragment", [
    ("lr_decay", 0.0, "(0, 1]"), ("lr_decay", 1.5, "(0, 1]"), ("momentum", 1.0, "[0, 1)"), ("local_epochs", 0.0, "(0, 1000]"),
    ("lora_targets", (), "non-empty list"), ("lora_targets", ("q", "q"), "distinct"), ("smoothing_mode", "both", "replace"),
    ("device", "tpu", "'cuda'"), ("preset", "nope", "la-lora-swin-b-cifar100"),
])
def test_new_fields_name_themselves_when_bad(field, value, fragment):
    with pytest.raises(ConfigError, match=field) as err:
        build_config(**{field: value}) if field != "momentum" else build_config(optimizer="sgd", momentum=value)
    assert err.value.field_name == field and fragment in str(err.value)


def test_momentum_needs_sgd():
    with pytest.raises(ConfigError, match="momentum=0.9 is invalid: expected 0 unless optimizer = 'sgd'"):
        build_config(momentum=0.9)


def full_batch_update(trainer, start, x, y, **optim):
    """One deterministic step from ``start``: q = 1 (every record), σ = 0; the update per parameter name."""
    trainer.optim = dataclasses.replace(trainer.optim, **optim)
    shard = ClientShard.build(1, (x,), y, batch_size=len(y))
    names = trainer.method.all_sent_names(trainer.factors)
    update, _ = trainer.train_phase(shard, start, trainer.method.phases(1)[0], 1)
    sizes = [trainer.params[n].numel() for n in names]
    return {n: u.view_as(trainer.params[n]) for n, u in zip(names, torch.split(update, sizes))}


def test_reference_smoothing_is_a_smoothed_sgd_step_then_the_raw_step_and_replace_is_not():
    trainer, shard, factors = tiny_client("la-lora", noise=0.0, clip=1.0, optimizer="sgd", lr=0.05)
    x, y = shard.dataset.tensors
    start = flatten(trainer.params, trainer.method.all_sent_names(factors)).detach().clone()
    plain = full_batch_update(trainer, start, x, y, smoothing=0.0)
    replace = full_batch_update(trainer, start, x, y, smoothing=1.0, smoothing_mode="replace")
    reference = full_batch_update(trainer, start, x, y, smoothing=1.0, smoothing_mode="reference")
    rates = {"A": 0.05, "B": 0.1, "head": 0.05}
    factor_of = {n: f for f, named in factors.items() for n in named}
    moved = [n for n in plain if plain[n].abs().sum() > 0]
    assert moved and any(factor_of[n] == "B" for n in moved)
    for name in moved:
        factor = factor_of[name]
        smoothed_step = smooth_gradient(plain[name], 1.0, matrix=factor in ("A", "B"))  # −r·S(g): S is linear
        torch.testing.assert_close(replace[name], smoothed_step, atol=1e-6, rtol=1e-4)
        # reference: −η·S(g) at the base rate η, then −r·g by the optimizer (B's r is 2η)
        torch.testing.assert_close(reference[name], plain[name] + (0.05 / rates[factor]) * smoothed_step, atol=1e-6, rtol=1e-4)
        assert not torch.allclose(reference[name], replace[name], atol=1e-6)


def test_the_learning_rate_decays_per_round():
    trainer, shard, factors = tiny_client("dp-lora", noise=0.0, clip=1.0, optimizer="sgd", lr=0.05)
    trainer.optim = dataclasses.replace(trainer.optim, lr_decay=0.9)
    x, y = shard.dataset.tensors
    full = ClientShard.build(1, (x,), y, batch_size=len(y))
    names = trainer.method.all_sent_names(factors)
    start = flatten(trainer.params, names).detach().clone()
    phase = trainer.method.phases(1)[0]
    first, _ = trainer.train_phase(full, start, phase, 1, round_idx=1)
    third, _ = trainer.train_phase(full, start, phase, 1, round_idx=3)
    assert first.abs().sum() > 0
    torch.testing.assert_close(third, first * 0.81, atol=1e-7, rtol=1e-4)
