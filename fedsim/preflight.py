"""Checks a config against the world before any process starts.

:func:`fedsim.config.validate` checks each field on its own; these checks need the data,
the model registry or the secure-aggregation encoding. Each failure is a
:class:`~fedsim.config.ConfigError` naming the field, the value and what would work.
"""

from __future__ import annotations

from fedsim.config import ConfigError, RunConfig
from fedsim.data import load_dataset, partition
from fedsim.secure_sum import SecureSumConfig


def check_data(config: RunConfig) -> None:
    """The dataset loads and splits into ``num_clients`` non-empty shards."""
    try:
        data = load_dataset(config.dataset, seed=config.seed, limit=config.limit)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError("dataset", config.dataset, f"a loadable dataset ({exc})") from None
    try:
        partition(
            data.train.labels.numpy(),
            config.num_clients,
            scheme=config.partition,
            alpha=config.dirichlet_alpha,
            seed=config.seed,
        )
    except ValueError as exc:
        raise ConfigError(
            "num_clients", config.num_clients, f"a split of {len(data.train.labels)} training examples that gives every client data ({exc})"
        ) from None


def check_model(config: RunConfig) -> None:
    """An image model must be a timm architecture (text models resolve at load time: hub ids too)."""
    if config.modality == "image":
        import timm

        if not timm.is_model(config.model):
            raise ConfigError("model", config.model, "a timm architecture name (see timm.list_models('*vit*'), timm.list_models('*swin*'))")


def check_secure_aggregation(config: RunConfig) -> None:
    """The fixed-point encoding has headroom for the sum of ``num_clients`` updates."""
    try:
        SecureSumConfig(clip_range=config.secagg_clip_range).codec(config.num_clients)
    except ValueError as exc:
        raise ConfigError("secagg_clip_range", config.secagg_clip_range, f"a range whose cohort sum fits Z_(2^32) ({exc})") from None


def preflight(config: RunConfig) -> None:
    """Run every check; raise :class:`ConfigError` on the first failure."""
    check_model(config)
    check_secure_aggregation(config)
    check_data(config)

