"""Checks a config against the world before any process starts.

:func:`fedsim.config.validate` checks each field on its own; these checks need the data,
the model registry or the secure-aggregation encoding. Each failure is a
:class:`~fedsim.config.ConfigError` naming the field, the value and what would work.
"""

from __future__ import annotations

import dataclasses

from accounting import CalibrationError, Schedule, calibrate_schedule
from fedsim.config import ConfigError, RunConfig
from fedsim.data.loaders import DatasetSplits, load_dataset
from fedsim.data.partition import partition
from fedsim.population import cohort_sampling
from fedsim.secure_sum.config import MIN_COHORT, secure_sum_config

_SKELLAM_FIELDS = (("modulus_bits", "secagg_modulus_bits"), ("noise_multiplier", "client_noise_multiplier"), ("clip", "client_clip"))


def load_checked_dataset(config: RunConfig) -> DatasetSplits:
    """The run's dataset, or a ConfigError naming ``dataset``."""
    try:
        return load_dataset(config.dataset, seed=config.seed, limit=config.limit)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError("dataset", config.dataset, f"a loadable dataset ({exc})") from None


def check_data(config: RunConfig, data: DatasetSplits | None = None) -> list[int]:
    """The dataset (``data``, or loaded) splits into one non-empty shard per (virtual) client; their sizes."""
    data = load_checked_dataset(config) if data is None else data
    try:
        shards = partition(
            data.train.labels.numpy(),
            config.population_size,
            scheme=config.partition,
            alpha=config.dirichlet_alpha,
            seed=config.seed,
        )
    except ValueError as exc:
        raise ConfigError(
            "population" if config.population else "num_clients", config.population_size, f"a split of {len(data.train.labels)} training examples that gives every client data ({exc})"
        ) from None
    return [len(shard) for shard in shards]


def check_device(config: RunConfig) -> None:
    """``device = cuda`` needs a GPU here (:func:`fedsim.transport.world.choose_device` raises a ConfigError)."""
    from fedsim.transport.world import choose_device

    choose_device(0, config.device)


def check_checkpoint(config: RunConfig, data: DatasetSplits | None = None) -> None:
    """``checkpoint`` weights load into the model (missing or reshaped backbone tensors are named);
    ``data``: the run's dataset if already loaded."""
    if config.checkpoint is None:
        return
    from fedsim.models.build import build_base_model
    from fedsim.models.checkpoint import CheckpointError
    from fedsim.task import model_spec

    classes = len((load_checked_dataset(config) if data is None else data).train.classes)
    try:
        build_base_model(model_spec(config, classes))
    except (CheckpointError, OSError) as exc:
        raise ConfigError("checkpoint", config.checkpoint, f"weights that load into {config.model!r} ({exc})") from None


def check_model(config: RunConfig) -> None:
    """An image model must be a timm architecture (text models resolve at load time: hub ids too)."""
    if config.modality == "image":
        import timm

        if not timm.is_model(config.model):
            raise ConfigError("model", config.model, "a timm architecture name (see timm.list_models('*vit*'), timm.list_models('*swin*'))")


def check_secure_aggregation(config: RunConfig) -> None:
    """The protocol's parameters are safe for the cohort, and the encoding has headroom for its sum.

    Uses the protocol's own checker (:func:`secagg.params.check_secagg_params`): the
    threshold against the collusion bound, the sparse graph's degree against the cohort,
    the chance that too few survive the configured dropout rate.
    """
    settings = secure_sum_config(config)
    cohort = cohort_sampling(config).expected_size(config.population_size)
    try:
        if not settings.client_level:  # the Skellam code is sized in check_client_level_noise
            settings.codec(config.population_size)  # headroom for the largest cohort: everyone
    except ValueError as exc:
        raise ConfigError(
            "secagg_clip_range", config.secagg_clip_range,
            f"a range whose cohort sum fits Z_(2^{config.secagg_modulus_bits}) ({exc})",
        ) from None
    try:
        settings.shape(cohort)
    except ValueError as exc:
        field = _secagg_field(str(exc))
        hint = (
            f"; or accept more aborted rounds: secagg_max_abort_probability={config.secagg_max_abort_probability:.3g}"
            if "survive" in str(exc) else ""
        )
        raise ConfigError(
            field, getattr(config, field), f"parameters the protocol accepts for a cohort of {cohort} clients: {exc}{hint}"
        ) from None
    for round_idx, stages in config.dropout_schedule.items():
        unknown = sorted({c for ids in stages.values() for c in ids if c > config.population_size})
        if round_idx > config.rounds or unknown:
            raise ConfigError(
                "dropout_schedule", {round_idx: dict(stages)},
                f"rounds in [1, {config.rounds}] and client ids in [1, {config.population_size}]",
            )


def check_client_level_noise(config: RunConfig, data: DatasetSplits | None = None) -> dict[str, list]:
    """With client-level DP, the Skellam mechanism's parameters for every phase of every method.

    Builds each method's model once (on the CPU, to learn the sizes of the updates its
    phases send) and sizes the mechanism for each (:func:`fedsim.dp.skellam.skellam_params`:
    the scale γ, the rounded sensitivities, the ring's wrap bound) at the expected cohort,
    and checks the smallest (2) and largest (the whole population) cohorts too; a ring too small for the
    noisy sum is a ConfigError naming the field. ``{}`` without client-level DP.
    """
    settings = secure_sum_config(config)
    if not settings.client_level:
        return {}
    import torch

    from fedsim.models.lora_params import parameters_by_name
    from fedsim.task import Task, fresh_model, model_spec
    from fedsim.transport.vectors import flat_size

    cohort = cohort_sampling(config).expected_size(config.population_size)
    data = load_checked_dataset(config) if data is None else data
    task = Task(model_spec(config, len(data.train.classes)), data)
    planned: dict[str, list] = {}
    for name in config.methods:
        method, _, factors = fresh_model(task, name, torch.device("cpu"))
        params = parameters_by_name(factors)
        planned[name] = []
        for phase in method.phases(1):
            dim = flat_size(params, phase.sent_names(factors))
            try:
                for size in (MIN_COHORT, config.population_size):  # the smallest and largest cohorts fit too
                    settings.skellam(dim, size)
                planned[name].append(settings.skellam(dim, cohort))
            except ValueError as exc:
                field = next((f for prefix, f in _SKELLAM_FIELDS if str(exc).startswith(prefix)), "secagg_modulus_bits")
                raise ConfigError(
                    field, getattr(config, field),
                    f"a setting whose Skellam sum of {dim} values fits Z_(2^{config.secagg_modulus_bits}) ({exc})",
                ) from None
    return planned


def _secagg_field(message: str) -> str:
    """The config field a ``secagg.params`` error is about (it names its own parameter first)."""
    for prefix, field in (("neighbours", "secagg_neighbours"), ("collusion", "secagg_collusion"),
                          ("dropout_rate", "dropout_rate"), ("no threshold fits", "dropout_rate"),
                          ("cohort", "num_clients")):
        if message.startswith(prefix):
            return field
    return "secagg_threshold"


def calibrate_noise(config: RunConfig, shard_sizes: list[int]) -> RunConfig:
    """With ``target_epsilon`` set, the config with the PRV-calibrated noise multiplier.

    Every client runs ``rounds × steps_i`` steps at q = B / n_i (steps_i = K, or
    ceil(local_epochs·n_i/B)); calibrating every distinct (q, steps) and taking the largest
    σ makes every client's ε meet the target (:func:`accounting.calibrate_schedule`: the
    smallest σ, within its tolerance, whose PRV upper bound is at most the target; with a
    fixed K only the smallest shard, the largest q, counts).
    """
    if config.target_epsilon is None:
        return config
    from fedsim.task import sample_level_schedules

    sigmas = []
    for rate, steps in sample_level_schedules(config, shard_sizes):  # with local epochs, one per distinct (q, steps)
        try:
            calibration = calibrate_schedule(
                Schedule(config.rounds, local_steps=steps, sample_rate=rate), config.target_epsilon, config.delta
            )
        except CalibrationError as exc:
            raise ConfigError("target_epsilon", config.target_epsilon, f"a budget reachable at delta={config.delta:g} ({exc})") from None
        sigmas.append(calibration.noise_multiplier)
    return dataclasses.replace(config, noise_multiplier=max(sigmas))


def preflight(config: RunConfig) -> RunConfig:
    """Run every check (raise :class:`ConfigError` on the first failure); the config to run.

    The returned config differs from ``config`` only by a calibrated ``noise_multiplier``
    when ``target_epsilon`` is set.
    """
    check_device(config)
    check_model(config)
    check_secure_aggregation(config)
    data = load_checked_dataset(config)  # once, for every check that needs it
    sizes = check_data(config, data)
    check_checkpoint(config, data)
    check_client_level_noise(config, data)
    return calibrate_noise(config, sizes)

