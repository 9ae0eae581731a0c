"""What a run trains: the dataset, the model recipe, and a fresh model per method.

Every rank builds the same :class:`Task` from the same config (the data split and the model
initialisation follow the run's public seed), so parameter names and the layout of every
exchanged vector agree without being sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from fedsim.config import RunConfig
from fedsim.data.loaders import (
    DatasetSplits,
    ImageData,
    TextData,
    load_dataset,
    prepare_images,
)
from fedsim.data.partition import partition
from fedsim.methods.registry import Method, get_method, round_steps
from fedsim.models.build import (
    ModelSpec,
    build_model,
    build_tokenizer,
    factor_parameters,
    tokenize,
)

__all__ = [
    "ResizeImages",
    "Task",
    "client_partition",
    "client_round_steps",
    "fresh_model",
    "load_task",
    "model_inputs",
    "model_spec",
    "sample_level_schedules",
    "stored_inputs",
]


@dataclass(frozen=True)
class Task:
    """A model family and the tensors fed to it."""

    spec: ModelSpec
    data: DatasetSplits


def model_spec(config: RunConfig, num_classes: int) -> ModelSpec:
    """The model this config trains (family from the dataset's modality)."""
    return ModelSpec(
        family="text" if config.modality == "text" else "timm",
        name=config.model,
        num_classes=num_classes,
        pretrained=config.pretrained,
        img_size=config.img_size if config.modality == "image" else None,
        model_kwargs=tuple(sorted(config.model_kwargs.items())),
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=config.lora_targets,
        checkpoint=config.checkpoint,
        max_length=config.max_length,
        init_seed=config.seed,
    )


def load_task(config: RunConfig) -> Task:
    """The run's dataset (seeded split, ``limit``) and the model spec for its classes."""
    data = load_dataset(config.dataset, seed=config.seed, limit=config.limit)
    return Task(model_spec(config, len(data.train.classes)), data)


def model_inputs(task: Task, data: TextData | ImageData) -> tuple[torch.Tensor, ...]:
    """Tokenize texts (``spec.max_length``) or resize images (``spec.img_size``) into model inputs."""
    if task.data.modality == "text":
        return tokenize(build_tokenizer(task.spec), list(data.texts), task.spec.max_length)
    return (prepare_images(data.images, task.spec.img_size),)


@dataclass(frozen=True)
class ResizeImages:
    """A batch's stored images at the model's size (``prepare_images``), done per batch."""

    img_size: int

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return (prepare_images(inputs[0], self.img_size),)


def stored_inputs(
    task: Task, data: TextData | ImageData, tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[tuple[torch.Tensor, ...], ResizeImages | None]:
    """What a client shard stores and how a batch of it becomes model inputs.

    Texts are tokenized once (``spec.max_length``: small integers); images stay at their
    stored size and are resized per batch, so a shard of 32-px CIFAR images for a 224-px
    Swin holds 49x less than the resized set would.
    """
    if task.data.modality == "text":
        return tokenize(tokenizer or build_tokenizer(task.spec), list(data.texts), task.spec.max_length), None
    return (data.images,), ResizeImages(task.spec.img_size)


def client_partition(config: RunConfig, task: Task) -> list[np.ndarray]:
    """The train-record indices of clients 1..population (entry i is client i + 1): the run's seeded partition."""
    labels = task.data.train.labels.numpy()
    return partition(labels, config.population_size, scheme=config.partition, alpha=config.dirichlet_alpha, seed=config.seed)


def client_round_steps(config: RunConfig, num_records: int, phases: int) -> int:
    """A client's DP-SGD steps per round (all phases): K, or ceil(local_epochs·n_i/B)."""
    return round_steps(
        local_steps=config.local_steps, local_epochs=config.local_epochs,
        batch_size=config.batch_size, num_records=num_records, phases=phases,
    )


def sample_level_schedules(config: RunConfig, shard_sizes: Sequence[int]) -> list[tuple[float, int]]:
    """The distinct (sample rate q_i = B/n_i, steps per round) of the clients, for calibration.

    With a fixed K only the largest q matters (ε grows with q at fixed steps); with local
    epochs a small shard has a larger q but fewer steps, so every distinct pair is listed.
    The steps use the most phases of any of the run's methods (one step per phase at least).
    """
    phases = max(len(get_method(name).phases(1)) for name in config.methods)
    pairs = {(min(1.0, config.batch_size / n), client_round_steps(config, n, phases)) for n in shard_sizes}
    if config.local_epochs is None:
        return [max(pairs)]
    return sorted(pairs)


def fresh_model(task: Task, method_name: str, device: torch.device) -> tuple[Method, torch.nn.Module, dict]:
    """A fresh model of the task for one method (same seed on every rank) and its LoRA factors."""
    method = get_method(method_name)
    model = build_model(task.spec).to(device)
    return method, model, factor_parameters(model)
