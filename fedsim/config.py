"""Run configuration: one validated, immutable description of a federated job.

Everything a run needs is in :class:`RunConfig`. It is built from a TOML file and/or
command-line options, validated in full before any process starts, written to the run
directory, and shipped to every rank. A bad value raises :class:`ConfigError` naming
the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

METHODS = ("la-lora", "dp-lora", "ffa-lora")
PARTITIONS = ("iid", "dirichlet")
OPTIMIZERS = ("adamw", "sgd")
BUNDLED_TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_DATASETS = ("wordnet-supersenses",)
IMAGE_DATASETS = ("digits", "fashion-mnist")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names field, value and range."""

    def __init__(self, field_name: str, value: Any, allowed: str) -> None:
        self.field_name = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={value!r} is invalid: expected {allowed}")


@dataclass(frozen=True)
class RunConfig:
    """A federated DP-LoRA job. Defaults are the bundled default job (text, MiniLM)."""

    # What to train.
    methods: tuple[str, ...] = ("la-lora",)
    dataset: str = "wordnet-supersenses"
    model: str = "all-MiniLM-L6-v2"
    pretrained: bool = True
    img_size: int = 32
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_length: int = 24
    limit: int | None = 2400
    # Federation.
    num_clients: int = 4
    rounds: int = 8
    local_steps: int = 6
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    # LoRA and optimisation.
    lora_rank: int = 8
    lora_alpha: float = 16.0
    optimizer: str = "adamw"
    lr: float = 1e-2
    head_lr: float = 2e-2
    b_lr_ratio: float = 2.0
    smoothing: float = 1.0
    # Sample-level DP-SGD (Abadi et al. 2016) on every client.
    batch_size: int = 32
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    # Secure aggregation.
    secagg_clip_range: float = 1.0
    # Runtime.
    seed: int = 0
    eval_every: int = 4
    threads_per_process: int = 1
    timeout_s: float = 600.0
    run_dir: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def modality(self) -> str:
        """"text" or "image", from the dataset name."""
        return dataset_modality(self.dataset)

    @property
    def world_size(self) -> int:
        """Server rank plus one rank per client."""
        return self.num_clients + 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["methods"] = list(self.methods)
        data["model_kwargs"] = dict(self.model_kwargs)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def dataset_modality(name: str) -> str:
    """Classify a dataset name as "text" or "image" (``csv:`` is text, ``imagefolder:`` image)."""
    if name in TEXT_DATASETS or name.startswith("csv:"):
        return "text"
    if name in IMAGE_DATASETS or name.startswith("imagefolder:"):
        return "image"
    raise ConfigError(
        "dataset",
        name,
        f"one of {TEXT_DATASETS + IMAGE_DATASETS} or 'csv:PATH' or 'imagefolder:PATH'",
    )


def _check(ok: bool, field_name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(field_name, value, allowed)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(config: RunConfig) -> None:
    """Check every field; raise :class:`ConfigError` on the first bad one."""
    c = config
    _check(
        isinstance(c.methods, tuple) and len(c.methods) > 0 and all(m in METHODS for m in c.methods),
        "methods", c.methods, f"a non-empty list drawn from {METHODS}",
    )
    _check(len(set(c.methods)) == len(c.methods), "methods", c.methods, "no repeated method")
    modality = dataset_modality(c.dataset)
    _check(isinstance(c.model, str) and c.model != "", "model", c.model, "a model name or path")
    _check(
        modality == "text" or c.model != BUNDLED_TEXT_MODEL,
        "model", c.model, "a timm model name for image datasets (e.g. vit_tiny_patch16_224, swin_tiny_patch4_window7_224)",
    )
    _check(isinstance(c.model_kwargs, Mapping), "model_kwargs", c.model_kwargs, "a table of extra timm model arguments")
    _check(_is_int(c.img_size) and 8 <= c.img_size <= 1024, "img_size", c.img_size, "an integer in [8, 1024]")
    _check(_is_int(c.max_length) and 4 <= c.max_length <= 512, "max_length", c.max_length, "an integer in [4, 512]")
    _check(c.limit is None or (_is_int(c.limit) and c.limit >= 10), "limit", c.limit, "None or an integer >= 10")
    _check(_is_int(c.num_clients) and 1 <= c.num_clients <= 1024, "num_clients", c.num_clients, "an integer in [1, 1024]")
    _check(_is_int(c.rounds) and 1 <= c.rounds <= 100_000, "rounds", c.rounds, "an integer in [1, 100000]")
    _check(_is_int(c.local_steps) and 1 <= c.local_steps <= 100_000, "local_steps", c.local_steps, "an integer in [1, 100000]")
    _check(c.partition in PARTITIONS, "partition", c.partition, f"one of {PARTITIONS}")
    _check(_is_real(c.dirichlet_alpha) and c.dirichlet_alpha > 0, "dirichlet_alpha", c.dirichlet_alpha, "a number > 0")
    _check(_is_int(c.lora_rank) and 1 <= c.lora_rank <= 1024, "lora_rank", c.lora_rank, "an integer in [1, 1024]")
    _check(_is_real(c.lora_alpha) and c.lora_alpha > 0, "lora_alpha", c.lora_alpha, "a number > 0")
    _check(c.optimizer in OPTIMIZERS, "optimizer", c.optimizer, f"one of {OPTIMIZERS}")
    for name in ("lr", "head_lr"):
        value = getattr(c, name)
        _check(_is_real(value) and 0 < value <= 10, name, value, "a number in (0, 10]")
    _check(_is_real(c.b_lr_ratio) and 0 < c.b_lr_ratio <= 100, "b_lr_ratio", c.b_lr_ratio, "a number in (0, 100]")
    _check(_is_real(c.smoothing) and 0 <= c.smoothing <= 100, "smoothing", c.smoothing, "a number in [0, 100] (0 disables)")
    _check(_is_int(c.batch_size) and 1 <= c.batch_size <= 65536, "batch_size", c.batch_size, "an integer in [1, 65536]")
    _check(_is_real(c.noise_multiplier) and 0 < c.noise_multiplier <= 1000, "noise_multiplier", c.noise_multiplier, "a number in (0, 1000]")
    _check(_is_real(c.max_grad_norm) and 0 < c.max_grad_norm <= 1e6, "max_grad_norm", c.max_grad_norm, "a number in (0, 1e6]")
    _check(_is_real(c.delta) and 0 < c.delta < 1, "delta", c.delta, "a number in (0, 1)")
    _check(_is_real(c.secagg_clip_range) and 0 < c.secagg_clip_range <= 1e4, "secagg_clip_range", c.secagg_clip_range, "a number in (0, 1e4]")
    _check(_is_int(c.seed) and 0 <= c.seed < 2**63, "seed", c.seed, "an integer in [0, 2^63)")
    _check(_is_int(c.eval_every) and c.eval_every >= 1, "eval_every", c.eval_every, "an integer >= 1")
    _check(_is_int(c.threads_per_process) and 1 <= c.threads_per_process <= 256, "threads_per_process", c.threads_per_process, "an integer in [1, 256]")
    _check(_is_real(c.timeout_s) and 10 <= c.timeout_s <= 86_400, "timeout_s", c.timeout_s, "seconds in [10, 86400]")


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RunConfig))


def build_config(file_values: Mapping[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Merge a config file's values with explicit overrides (None means "not given")."""
    values: dict[str, Any] = {}
    for source in (file_values or {}, {k: v for k, v in overrides.items() if v is not None}):
        for key, value in source.items():
            name = key.replace("-", "_")
            if name not in FIELD_NAMES:
                raise ConfigError(key, value, f"a known field: {', '.join(sorted(FIELD_NAMES))}")
            values[name] = value
    if "methods" in values:
        values["methods"] = parse_methods(values["methods"])
    return RunConfig(**values)


def parse_methods(value: Any) -> tuple[str, ...]:
    """Accept "la-lora,dp-lora", ["la-lora", "dp-lora"] or a tuple."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError("methods", value, "a comma-separated string or a list of method names")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file (top-level keys are :class:`RunConfig` fields)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("config", str(path), "an existing TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"valid TOML ({exc})") from None


def config_from_json(text: str) -> RunConfig:
    """Inverse of :meth:`RunConfig.to_json` (used to ship the config to ranks and re-read runs)."""
    data = json.loads(text)
    data["methods"] = tuple(data["methods"])
    return RunConfig(**data)
