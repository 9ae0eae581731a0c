"""Central evaluation of the global model on held-out data (not private: the server's own)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from fedsim.server.callbacks import MethodRun, RoundCallback, RoundResult
from fedsim.task import model_inputs

__all__ = ["CentralEvaluation", "evaluate"]


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


class CentralEvaluation(RoundCallback):
    """Evaluates the global model before training, every ``eval_every`` rounds and after the last.

    Adds ``accuracy``/``loss`` (None on rounds not evaluated) and ``eval_seconds`` to the
    round's metrics; ``initial_accuracy`` and the last evaluated ``accuracy``/``loss`` to
    the summary.
    """

    def __init__(self) -> None:
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.labels = torch.empty(0)
        self.initial_accuracy = self.accuracy = self.loss = 0.0

    def method_started(self, run: MethodRun) -> None:
        self.inputs, self.labels = model_inputs(run.task, run.task.data.test), run.task.data.test.labels
        self.initial_accuracy, self.loss = evaluate(run.model, self.inputs, self.labels, device=run.device)
        self.accuracy = self.initial_accuracy

    def round_ended(self, run: MethodRun, result: RoundResult) -> Mapping[str, Any]:
        if not (result.round % run.config.eval_every == 0 or result.round == run.config.rounds):
            return {"accuracy": None, "loss": None, "eval_seconds": 0.0}
        started = time.perf_counter()
        self.accuracy, self.loss = evaluate(run.model, self.inputs, self.labels, device=run.device)
        return {"accuracy": self.accuracy, "loss": self.loss, "eval_seconds": time.perf_counter() - started}

    def method_ended(self, run: MethodRun) -> Mapping[str, Any]:
        return {"initial_accuracy": self.initial_accuracy, "accuracy": self.accuracy, "loss": self.loss}
