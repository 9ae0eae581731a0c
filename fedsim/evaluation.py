"""Server-side evaluation of the global model on held-out data (not private: the server's own)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    labels: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(inputs, labels)``."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(labels), batch_size):
        batch = [x[start : start + batch_size].to(device) for x in inputs]
        target = labels[start : start + batch_size].to(device)
        logits = model(*batch)
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=-1) == target).sum().item()
    model.train(was_training)
    return correct / len(labels), loss_sum / len(labels)
