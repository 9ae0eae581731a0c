"""The fine-tuned part of a LoRA model, grouped the way federated algorithms use it.

Algorithms alternate which LoRA factor trains (LA-LoRA, RoLoRA, DEeR) and only that
factor travels, so parameters are grouped into "A", "B" and "head". The grouping is by
name, independent of the current `requires_grad` flags, because the algorithm flips
those flags between steps. Names are `model.named_parameters()` names of the PeftModel
(an Opacus `GradSampleModule` wrapper is looked through), so every process agrees on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn as nn

GROUPS: tuple[str, ...] = ("A", "B", "head")

# peft names LoRA factors `...lora_A.<adapter>.weight` (Linear/Conv) and
# `...lora_embedding_A.<adapter>` (Embedding); the head copy that trains lives under
# `...modules_to_save.<adapter>.` (the frozen original under `original_module`).
_GROUP_PATTERNS: dict[str, re.Pattern[str]] = {
    "A": re.compile(r"(^|\.)lora_(embedding_)?A(\.|$)"),
    "B": re.compile(r"(^|\.)lora_(embedding_)?B(\.|$)"),
    "head": re.compile(r"(^|\.)modules_to_save\."),
}


def parameter_group(name: str) -> str | None:
    """Which group ("A", "B", "head") a parameter name belongs to, or None (frozen base)."""
    for group, pattern in _GROUP_PATTERNS.items():
        if pattern.search(name):
            return group
    return None


def _unwrap(model: nn.Module) -> nn.Module:
    """Look through Opacus' GradSampleModule (it stores the model as `_module`)."""
    while isinstance(getattr(model, "_module", None), nn.Module):
        model = model._module
    return model


def parameters_by_name(factors: Mapping[str, Mapping[str, nn.Parameter]]) -> dict[str, nn.Parameter]:
    """The parameters of every factor group in one {name: parameter} map."""
    return {name: p for named in factors.values() for name, p in named.items()}


def factor_parameters(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """{"A": {name: p}, "B": {...}, "head": {...}} for a peft LoRA model.

    Raises ValueError if a parameter that requires grad falls in no group (it would be
    trained but never exchanged), or if the model has no LoRA factors at all.
    """
    model = _unwrap(model)
    groups: dict[str, dict[str, nn.Parameter]] = {g: {} for g in GROUPS}
    stray: list[str] = []
    for name, param in model.named_parameters():
        group = parameter_group(name)
        if group is not None:
            groups[group][name] = param
        elif param.requires_grad:
            stray.append(name)
    if stray:
        raise ValueError(
            f"trainable parameters outside the LoRA factors and the head: {stray[:5]}"
            f"{' ...' if len(stray) > 5 else ''}; freeze them or add them to modules_to_save"
        )
    if not groups["A"] or not groups["B"]:
        raise ValueError("model has no LoRA factors (no lora_A / lora_B parameters)")
    return groups


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every A, B and head tensor, keyed by parameter name."""
    return {
        name: param.detach().clone()
        for group in factor_parameters(model).values()
        for name, param in group.items()
    }


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the model's A, B and head parameters, in place.

    The key sets must match exactly and shapes must agree: a partial load would leave a
    silently stale factor, which in federated training looks like a converging model.
    Values are cast to each parameter's dtype and device.
    """
    params = {
        name: param
        for group in factor_parameters(model).values()
        for name, param in group.items()
    }
    missing = sorted(params.keys() - state.keys())
    unexpected = sorted(state.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(
            f"load_trainable_state: missing keys {missing[:5]} ({len(missing)} total), "
            f"unexpected keys {unexpected[:5]} ({len(unexpected)} total)"
        )
    for name, param in params.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise ValueError(
                f"load_trainable_state: {name!r} has shape {tuple(state[name].shape)}, "
                f"the model expects {tuple(param.shape)}"
            )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])
