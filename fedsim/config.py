"""Run configuration: one validated, immutable description of a federated job.

Everything a run needs is in :class:`RunConfig`. It is built from a TOML file and/or
command-line options, validated in full before any process starts, written to the run
directory, and shipped to every rank. A bad value raises :class:`ConfigError` naming
the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import tomllib

from fedsim.errors import BAD_INPUT, FedsimError
from fedsim.methods.registry import DEFAULT_METHOD
from fedsim.options import (
    BUNDLED_TEXT_MODEL,
    FIELD_OPTIONS,
    IMAGE_DATASETS,
    TEXT_DATASETS,
    is_int,
)
from fedsim.presets import PRESET_NAMES, preset_values
from fedsim.rundir import CONFIG_FORMAT_VERSION, FORMAT_VERSION_FIELD, readable_format
from fedsim.transport.vocabulary import DROPOUT_STAGES
from secagg.stages import CONSISTENCY_CHECK
from secagg.threat_models import ACTIVE


class ConfigError(FedsimError, ValueError):
    """A configuration value is out of range; the message names field, value and range."""

    exit_code = BAD_INPUT

    def __init__(self, field_name: str, value: Any, allowed: str) -> None:
        self.field_name = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={value!r} is invalid: expected {allowed}")


@dataclass(frozen=True)
class RunConfig:
    """A federated DP-LoRA job. Defaults are the bundled default job (text, MiniLM)."""

    # The preset the values started from (fedsim.presets; None: none), recorded for provenance.
    preset: str | None = None
    # What to train.
    methods: tuple[str, ...] = (DEFAULT_METHOD,)
    dataset: str = "wordnet-supersenses"
    model: str = "all-MiniLM-L6-v2"
    pretrained: bool = True
    # Local pretrained weights (timm .pth/.safetensors, or a transformers directory); None: the hub.
    checkpoint: str | None = None
    img_size: int = 32
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_length: int = 24
    limit: int | None = 2400
    # Federation.
    num_clients: int = 4  # client processes
    # Virtual clients hosted round-robin by the client processes (None: one per process),
    # and each round's cohort: everyone, Poisson at cohort_rate, or cohort_size at random.
    population: int | None = None
    cohort: str = "all"
    cohort_rate: float = 1.0
    cohort_size: int | None = None
    rounds: int = 8
    local_steps: int = 6
    # When set, each client runs ceil(local_epochs · n_i / batch_size) steps per round instead.
    local_epochs: float | None = None
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    # LoRA and optimisation.
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # Module-name suffixes that get LoRA (None: the model family's default).
    lora_targets: tuple[str, ...] | None = None
    optimizer: str = "adamw"
    lr: float = 1e-2
    lr_decay: float = 1.0  # round r trains at lr · lr_decay^(r−1)
    momentum: float = 0.0  # SGD only
    head_lr: float = 2e-2
    b_lr_ratio: float = 2.0
    smoothing: float = 1.0
    smoothing_mode: str = "replace"
    # Sample-level DP-SGD (Abadi et al. 2016) on every client.
    batch_size: int = 32
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    # Client-level DP with distributed noise (0 disables), the Skellam mechanism: each cohort
    # member clips its whole update to client_clip and adds its share of integer Skellam
    # noise; the secure sum's noise has variance (z·client_clip)² (fedsim.dp.skellam).
    client_noise_multiplier: float = 0.0
    client_clip: float = 1.0
    # When set, noise_multiplier is calibrated (PRV) so every client's ε meets it at delta.
    target_epsilon: float | None = None
    # Secure aggregation (Bonawitz et al. 2017; SecAgg+ graph: Bell et al. 2020).
    secagg_clip_range: float = 1.0
    secagg_modulus_bits: int = 32
    secagg_graph: str = "full"
    secagg_neighbours: int | None = None
    secagg_threshold: int | float | None = None
    secagg_collusion: int | float = 0
    # Threat model (secagg.params.THREAT_MODELS) and the declared bound on real dropouts per
    # round (a fraction of the cohort) that, with the injected rate, sizes t and k.
    secagg_threat_model: str = "semi-honest"
    secagg_max_dropout: float = 0.1
    secagg_max_abort_probability: float = 2.0**-20
    secagg_timeout_s: float = 60.0
    # None: on under the active threat model, off under semi-honest (resolved on construction).
    secagg_consistency_check: bool | None = None
    # Injected dropouts (real ones need no setting: a process that dies or stays silent is dropped).
    dropout_rate: float = 0.0
    dropout_stages: tuple[str, ...] = DROPOUT_STAGES
    dropout_schedule: Mapping[int, Mapping[str, tuple[int, ...]]] = field(default_factory=dict)
    # Runtime.
    seed: int = 0
    eval_every: int = 4
    threads_per_process: int = 1
    device: str = "auto"  # "cpu", "cuda" or "auto" (cuda when available)
    timeout_s: float = 600.0
    run_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.dropout_stages, (list, str)):
            object.__setattr__(self, "dropout_stages", parse_stages(self.dropout_stages))
        if isinstance(self.lora_targets, (list, str)):
            object.__setattr__(self, "lora_targets", parse_names("lora_targets", self.lora_targets))
        if is_int(self.local_epochs):  # TOML and JSON may give 5 for 5.0
            object.__setattr__(self, "local_epochs", float(self.local_epochs))
        for name in ("secagg_threshold", "secagg_collusion"):
            if isinstance(getattr(self, name), str):  # from the command line: "3" or "0.5"
                object.__setattr__(self, name, parse_count_or_fraction(name, getattr(self, name)))
        object.__setattr__(self, "dropout_schedule", parse_dropout_schedule(self.dropout_schedule))
        if self.secagg_consistency_check is None:  # the threat model decides
            object.__setattr__(self, "secagg_consistency_check", self.secagg_threat_model == ACTIVE)
        validate(self)

    @property
    def modality(self) -> str:
        """"text" or "image", from the dataset name."""
        return dataset_modality(self.dataset)

    @property
    def population_size(self) -> int:
        """Virtual clients in the federation (one per client process unless ``population`` is set)."""
        return self.num_clients if self.population is None else self.population

    @property
    def world_size(self) -> int:
        """Server rank plus one rank per client."""
        return self.num_clients + 1

    @property
    def secagg_dropout_probability(self) -> float:
        """Probability that a client drops somewhere in a round at the injected per-stage rate
        (over the stages the run has: ConsistencyCheck only when it is on)."""
        stages = [s for s in self.dropout_stages if s != CONSISTENCY_CHECK or self.secagg_consistency_check]
        return 1.0 - (1.0 - self.dropout_rate) ** len(stages)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["methods"] = list(self.methods)
        data["model_kwargs"] = dict(self.model_kwargs)
        data["dropout_stages"] = list(self.dropout_stages)
        data["lora_targets"] = None if self.lora_targets is None else list(self.lora_targets)
        data["dropout_schedule"] = {
            str(r): {stage: list(ids) for stage, ids in stages.items()} for r, stages in self.dropout_schedule.items()
        }
        return data

    def to_json(self) -> str:
        """``config.json``: every field, and the layout's ``format_version``."""
        return json.dumps({FORMAT_VERSION_FIELD: CONFIG_FORMAT_VERSION, **self.to_dict()}, indent=2, sort_keys=True)


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


def validate(config: RunConfig) -> None:
    """Check every field; raise :class:`ConfigError` on the first bad one.

    Each field's own rule comes from its row in :data:`fedsim.options.FIELD_OPTIONS`;
    the checks that relate two fields follow.
    """
    c = config
    for option in FIELD_OPTIONS:
        value = getattr(c, option.field)
        _check(option.rule.check(value), option.field, value, option.rule.allowed)
    _check(len(set(c.methods)) == len(c.methods), "methods", c.methods, "no repeated method")
    _check(c.momentum == 0 or c.optimizer == "sgd", "momentum", c.momentum, f"0 unless optimizer = 'sgd' (optimizer={c.optimizer!r})")
    _check(c.checkpoint is None or c.pretrained, "checkpoint", c.checkpoint, "unset when pretrained = false (a checkpoint is the pretrained weights)")
    modality = dataset_modality(c.dataset)
    _check(
        modality == "text" or c.model != BUNDLED_TEXT_MODEL,
        "model", c.model, "a timm model name for image datasets (e.g. vit_tiny_patch16_224, swin_tiny_patch4_window7_224)",
    )
    _check(c.population is None or (is_int(c.population) and c.num_clients <= c.population <= 1_000_000), "population", c.population, f"None or an integer in [num_clients={c.num_clients}, 1000000]")
    _check(c.cohort != "fixed" or (is_int(c.cohort_size) and 2 <= c.cohort_size <= c.population_size), "cohort_size", c.cohort_size, f"an integer in [2, population={c.population_size}] when cohort = 'fixed'")
    _check(c.secagg_neighbours is None or c.secagg_graph == "sparse", "secagg_neighbours", c.secagg_neighbours, "None unless secagg_graph = 'sparse'")
    _check(
        c.secagg_consistency_check or c.secagg_threat_model != ACTIVE,
        "secagg_consistency_check", c.secagg_consistency_check,
        "true (or unset) under secagg_threat_model = 'active', whose guarantees rest on the signed survivor set",
    )


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RunConfig))


# Two ways to set a round's local work: the layer that sets either one decides.
STEP_BUDGET_FIELDS = ("local_steps", "local_epochs")


def _field_layer(source: Mapping[str, Any]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key, value in source.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(key, value, f"a known field: {', '.join(sorted(FIELD_NAMES))}")
        layer[name] = value
    return layer


def build_config(file_values: Mapping[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Merge a preset, a config file's values and explicit overrides (None means "not given").

    Layers, lowest first: the preset named by the overrides or else by the file
    (:func:`fedsim.presets.preset_values`), the file, the overrides. A layer that sets
    ``local_steps`` or ``local_epochs`` replaces the lower layers' choice of both (``-k 10``
    beside a preset with local epochs means K = 10).
    """
    file_layer = _field_layer(file_values or {})
    explicit = _field_layer({k: v for k, v in overrides.items() if v is not None})
    name = explicit.get("preset", file_layer.get("preset"))
    layers = [file_layer, explicit]
    if name is not None:
        try:
            layers.insert(0, preset_values(name))
        except ValueError:
            raise ConfigError("preset", name, f"None or one of {PRESET_NAMES}") from None
    values: dict[str, Any] = {}
    for layer in layers:
        if any(k in layer for k in STEP_BUDGET_FIELDS):
            for k in STEP_BUDGET_FIELDS:
                values.pop(k, None)
        values.update(layer)
    if "methods" in values:
        values["methods"] = parse_methods(values["methods"])
    return RunConfig(**values)


def parse_names(field_name: str, value: Any) -> tuple[str, ...]:
    """Accept "attn.qkv,attn.proj", ["attn.qkv", "attn.proj"] or a tuple, for ``field_name``."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError(field_name, value, "a comma-separated string or a list of names")


def parse_methods(value: Any) -> tuple[str, ...]:
    """Accept "la-lora,dp-lora", ["la-lora", "dp-lora"] or a tuple."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError("methods", value, "a comma-separated string or a list of method names")


def parse_stages(value: Any) -> tuple[str, ...]:
    """Accept "ShareKeys,Unmasking", ["ShareKeys", "Unmasking"] or a tuple."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ConfigError("dropout_stages", value, f"a comma-separated string or a list drawn from {DROPOUT_STAGES}")


def parse_dropout_schedule(value: Any) -> dict[int, dict[str, tuple[int, ...]]]:
    """Normalise ``{round: {stage: [client ids]}}`` (TOML and JSON give string round keys)."""
    allowed = "a table {round: {stage: [client ids]}} with rounds >= 1, stages from " + str(DROPOUT_STAGES) + " and client ids >= 1"
    _check(isinstance(value, Mapping), "dropout_schedule", value, allowed)
    schedule: dict[int, dict[str, tuple[int, ...]]] = {}
    for round_key, stages in value.items():
        round_idx = int(round_key) if isinstance(round_key, str) and round_key.isdigit() else round_key
        _check(is_int(round_idx) and round_idx >= 1 and isinstance(stages, Mapping), "dropout_schedule", {round_key: stages}, allowed)
        schedule[round_idx] = {}
        for stage, ids in stages.items():
            ok = stage in DROPOUT_STAGES and isinstance(ids, (list, tuple)) and all(is_int(i) and i >= 1 for i in ids)
            _check(ok, "dropout_schedule", {round_key: {stage: ids}}, allowed)
            schedule[round_idx][stage] = tuple(sorted(set(ids)))
    return schedule


def parse_drops(specs: Sequence[str], base: Any = None) -> dict[int, dict[str, tuple[int, ...]]]:
    """``base`` (a ``dropout_schedule``) plus the ``--drop ROUND:STAGE:ID[,ID...]`` command-line entries."""
    schedule: dict[int, dict[str, list[int]]] = {
        r: {stage: list(ids) for stage, ids in stages.items()} for r, stages in parse_dropout_schedule(base or {}).items()
    }
    for spec in specs:
        parts = spec.split(":")
        ok = len(parts) == 3 and parts[0].isdigit() and all(p.strip().isdigit() for p in parts[2].split(","))
        _check(ok, "drop", spec, "ROUND:STAGE:CLIENT[,CLIENT...], e.g. 2:MaskedInputCollection:3")
        ids = [int(p) for p in parts[2].split(",")]
        schedule.setdefault(int(parts[0]), {}).setdefault(parts[1], []).extend(ids)
    return parse_dropout_schedule(schedule)


def parse_count_or_fraction(field_name: str, text: str | None) -> int | float | None:
    """A command-line count ("3") or fraction ("0.5") for ``secagg_threshold`` / ``secagg_collusion``."""
    if text is None:
        return None
    try:
        return int(text) if text.strip().isdigit() else float(text)
    except ValueError:
        raise ConfigError(field_name, text, "a count (e.g. 3) or a fraction (e.g. 0.5)") from None


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
    if not readable_format(data, CONFIG_FORMAT_VERSION):
        raise ConfigError(FORMAT_VERSION_FIELD, data[FORMAT_VERSION_FIELD], f"{CONFIG_FORMAT_VERSION} (a config.json this fedsim can read)")
    data.pop(FORMAT_VERSION_FIELD, None)
    data["methods"] = tuple(data["methods"])
    return RunConfig(**data)  # a recorded preset is provenance only: its values are already resolved
