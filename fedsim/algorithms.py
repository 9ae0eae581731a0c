"""The federated LoRA methods: which factors train at which local step, and what is sent.

A LoRA adapter on a frozen weight W is W + (α/r)·B·A with A ∈ R^{r×d_in} (random init)
and B ∈ R^{d_out×r} (zero init). Methods differ only in which of {A, B, head} a local step
updates, which tensors leave the client, and their learning rates:

- ``dp-lora``: A, B and the head every step (vanilla DP-LoRA); all three are sent.
- ``ffa-lora``: A frozen at its shared random init (Sun et al., ICLR 2024); B and the head
  are trained and sent.
- ``la-lora``: alternate the factor within the round (arXiv 2602.19926): B on even local
  steps, A on odd ones, the head every step. B starts at zero, so dL/dA = 0 at the first
  step: starting with B wastes no step. B's learning rate is ``b_lr_ratio`` × A's, and the
  privatized gradient is smoothed (:mod:`fedsim.smoothing`) before the step.

Every method trains a fixed set of parameters for the whole run (``trainable``); a step
chooses a subset (``active_at``). Opacus's hooks see the full trainable set, so toggling
``requires_grad`` (which breaks its hooks) is never needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

FACTORS = ("A", "B", "head")


@dataclass(frozen=True)
class Method:
    """A federated LoRA method as seen by one client."""

    name: str
    trainable: frozenset[str]
    alternate: bool
    smoothing: bool

    def active_at(self, step: int) -> frozenset[str]:
        """Factors updated by local step ``step`` (0-based, counted within the round)."""
        if not self.alternate:
            return self.trainable
        factor = "B" if step % 2 == 0 else "A"
        return frozenset({factor, "head"})

    @property
    def sent(self) -> frozenset[str]:
        """Factors whose update leaves the client (through secure aggregation)."""
        return self.trainable

    def sent_names(self, factors: Mapping[str, Mapping[str, object]]) -> list[str]:
        """Sorted parameter names of the sent factors: the layout of every exchanged vector."""
        return sorted(name for factor in self.sent for name in factors[factor])


METHOD_TABLE: dict[str, Method] = {
    "dp-lora": Method("dp-lora", frozenset(FACTORS), alternate=False, smoothing=False),
    "ffa-lora": Method("ffa-lora", frozenset({"B", "head"}), alternate=False, smoothing=False),
    "la-lora": Method("la-lora", frozenset(FACTORS), alternate=True, smoothing=True),
}


def get_method(name: str) -> Method:
    """Look a method up by name; a clear error lists the known ones."""
    try:
        return METHOD_TABLE[name]
    except KeyError:
        raise ValueError(f"method={name!r} is unknown: expected one of {sorted(METHOD_TABLE)}") from None


def factor_learning_rates(method: Method, lr: float, head_lr: float, b_lr_ratio: float) -> dict[str, float]:
    """Per-factor learning rates: η for A, ratio·η for B under LA-LoRA (its code uses 2η)."""
    b_lr = lr * b_lr_ratio if method.name == "la-lora" else lr
    return {"A": lr, "B": b_lr, "head": head_lr}
