"""What a run trains: the dataset, the model recipe, and a fresh model per method.

Every rank builds the same :class:`Task` from the same config (the data split and the model
initialisation follow the run's public seed), so parameter names and the layout of every
exchanged vector agree without being sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsim.config import RunConfig
from fedsim.data.loaders import DatasetSplits, ImageData, TextData, load_dataset, prepare_images
from fedsim.methods.registry import Method, get_method
from fedsim.models.build import ModelSpec, build_model, build_tokenizer, factor_parameters, tokenize

__all__ = ["Task", "fresh_model", "load_task", "model_inputs", "model_spec"]


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


def fresh_model(task: Task, method_name: str, device: torch.device) -> tuple[Method, torch.nn.Module, dict]:
    """A fresh model of the task for one method (same seed on every rank) and its LoRA factors."""
    method = get_method(method_name)
    model = build_model(task.spec).to(device)
    return method, model, factor_parameters(model)
