"""Flat vectors of named tensors: what travels between server and clients.

Both sides build the same model from the same seed, so a sorted list of parameter names
fixes the layout; only the values travel.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def flat_size(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> int:
    """How many values :func:`flatten` gives for ``names``: the length of the exchanged vector."""
    return sum(tensors[name].numel() for name in names)


def flatten(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Concatenate ``tensors[name]`` for ``name`` in ``names`` into one float32 vector."""
    return torch.cat([tensors[name].detach().reshape(-1).to(torch.float32) for name in names])


@torch.no_grad()
def assign_flat(params: Mapping[str, torch.nn.Parameter], names: Sequence[str], vector: torch.Tensor) -> None:
    """Copy consecutive slices of ``vector`` into ``params[name]`` (the inverse of :func:`flatten`)."""
    expected = flat_size(params, names)
    if vector.numel() != expected:
        raise ValueError(f"flat vector has {vector.numel()} values, the layout needs {expected}")
    offset = 0
    for name in names:
        p = params[name]
        p.copy_(vector[offset : offset + p.numel()].view_as(p).to(p.device, p.dtype))
        offset += p.numel()


@torch.no_grad()
def add_flat(params: Mapping[str, torch.nn.Parameter], names: Sequence[str], vector: torch.Tensor) -> None:
    """Add consecutive slices of ``vector`` to ``params[name]`` in place."""
    offset = 0
    for name in names:
        p = params[name]
        p.add_(vector[offset : offset + p.numel()].view_as(p).to(p.device, p.dtype))
        offset += p.numel()
