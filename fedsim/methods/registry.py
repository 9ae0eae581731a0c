"""The federated LoRA methods: which factors train at which local step, and what is sent.

A LoRA adapter on a frozen weight W is W + (α/r)·B·A with A ∈ R^{r×d_in} (random init)
and B ∈ R^{d_out×r} (zero init). Methods differ only in which of {A, B, head} a local step
updates, which tensors leave the client, when, and their learning rates. A round is a
sequence of *phases*; a phase is local training followed by one secure aggregation of
what that phase trained:

- ``dp-lora``: one phase; A, B and the head every step (vanilla DP-LoRA); all three sent.
- ``ffa-lora``: one phase; A frozen at its shared random init (Sun et al., ICLR 2024); B and
  the head are trained and sent.
- ``la-lora``: one phase that alternates the factor within the round (arXiv 2602.19926): B
  on even local steps, A on odd ones, the head every step. B starts at zero, so dL/dA = 0 at
  the first step: starting with B wastes no step. B's learning rate is ``b_lr_ratio`` × A's,
  and the privatized gradient is smoothed (:mod:`fedsim.methods.smoothing`) before the step.
- ``rolora``: one phase that alternates the factor *across* rounds (Chen et al. 2025):
  odd rounds train and send B (and the head), even rounds A (and the head).
- ``deer``: two phases per round (arXiv 2410.12926, the "deviation eliminator"): A frozen,
  B trained and aggregated; then B frozen, A trained and aggregated. Every client holds the
  same frozen factor in each phase, so the mean of the products B_i·A equals the product of
  the means: no aggregation deviation. DEeR's noise regulator (which shapes continuous
  Gaussian client-level noise through the frozen factor) is not applied: client-level noise
  here is the integer Skellam mechanism's (:mod:`fedsim.dp.skellam`), isotropic.

The local steps of a round are split over its phases (``phase_steps``), so every method
does the same local work per round. Every method trains a fixed set of parameters for the
whole run (``trainable``); a step chooses a subset (``Phase.active_at``). Opacus's hooks
see the full trainable set, so toggling ``requires_grad`` (which breaks its hooks) is never
needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

FACTORS = ("A", "B", "head")

JOINT = "joint"
STEP_ALTERNATING = "step-alternating"
ROUND_ALTERNATING = "round-alternating"
TWO_STAGE = "two-stage"

# LA-LoRA's smoothed gradient replaces the raw one, or (the published code) a plain step on
# it precedes the optimizer's step on the raw one (fedsim.methods.smoothing).
REPLACE = "replace"
REFERENCE = "reference"
SMOOTHING_MODES = (REPLACE, REFERENCE)


@dataclass(frozen=True)
class Phase:
    """Local training of some factors, then one secure aggregation of exactly those."""

    trained: frozenset[str]
    alternate: bool = False

    def active_at(self, step: int) -> frozenset[str]:
        """Factors updated by local step ``step`` (0-based, counted within the phase)."""
        if not self.alternate:
            return self.trained
        factor = "B" if step % 2 == 0 else "A"
        return frozenset({factor, "head"})

    @property
    def sent(self) -> frozenset[str]:
        """Factors whose update leaves the client (through secure aggregation)."""
        return self.trained

    def sent_names(self, factors: Mapping[str, Mapping[str, object]]) -> list[str]:
        """Sorted parameter names of the sent factors: the layout of the exchanged vector."""
        return sorted(name for factor in self.sent for name in factors[factor])


@dataclass(frozen=True)
class Method:
    """A federated LoRA method: its trainable set, its per-round phases, its own flags.

    ``smoothing``: the privatized gradient is smoothed (LA-LoRA's low-pass filter);
    ``scaled_b_lr``: B's learning rate is ``b_lr_ratio`` x A's (LA-LoRA).
    """

    name: str
    trainable: frozenset[str]
    schedule: str
    smoothing: bool = False
    scaled_b_lr: bool = False

    def phases(self, round_idx: int) -> tuple[Phase, ...]:
        """The phases of round ``round_idx`` (1-based), in order."""
        if round_idx < 1:
            raise ValueError(f"round_idx={round_idx!r} is invalid: expected an integer >= 1")
        if self.schedule == JOINT:
            return (Phase(self.trainable),)
        if self.schedule == STEP_ALTERNATING:
            return (Phase(self.trainable, alternate=True),)
        if self.schedule == ROUND_ALTERNATING:
            return (Phase(frozenset({"B" if round_idx % 2 == 1 else "A", "head"})),)
        if self.schedule == TWO_STAGE:
            return (Phase(frozenset({"B", "head"})), Phase(frozenset({"A", "head"})))
        raise ValueError(f"schedule={self.schedule!r} is unknown")

    def all_sent_names(self, factors: Mapping[str, Mapping[str, object]]) -> list[str]:
        """Sorted names of every parameter any phase may send (what the server tracks)."""
        return sorted(name for factor in self.trainable for name in factors[factor])


LA_LORA = "la-lora"
DEER = "deer"
"""The two methods whose papers' setups are presets (:mod:`fedsim.presets`)."""

METHOD_TABLE: dict[str, Method] = {
    method.name: method
    for method in (
        Method(LA_LORA, frozenset(FACTORS), STEP_ALTERNATING, smoothing=True, scaled_b_lr=True),
        Method("dp-lora", frozenset(FACTORS), JOINT),
        Method("ffa-lora", frozenset({"B", "head"}), JOINT),
        Method("rolora", frozenset(FACTORS), ROUND_ALTERNATING),
        Method(DEER, frozenset(FACTORS), TWO_STAGE),
    )
}
"""Every method by name; the one list of method names (``METHOD_NAMES``) is its keys."""

METHOD_NAMES: tuple[str, ...] = tuple(METHOD_TABLE)
"""Method names in the order ``--help`` and ``fedsim compare`` list them."""

DEFAULT_METHOD = METHOD_NAMES[0]
"""The bundled default job's method (LA-LoRA)."""


def get_method(name: str) -> Method:
    """Look a method up by name; a clear error lists the known ones."""
    try:
        return METHOD_TABLE[name]
    except KeyError:
        raise ValueError(f"method={name!r} is unknown: expected one of {sorted(METHOD_NAMES)}") from None


def phase_steps(local_steps: int, phases: int) -> list[int]:
    """Split a round's ``local_steps`` over its phases, earlier phases taking the remainder."""
    if phases < 1 or local_steps < phases:
        raise ValueError(f"local_steps={local_steps!r} is invalid: expected at least one step per phase ({phases})")
    base, extra = divmod(local_steps, phases)
    return [base + (1 if i < extra else 0) for i in range(phases)]


def round_steps(*, local_steps: int, local_epochs: float | None, batch_size: int, num_records: int, phases: int = 1) -> int:
    """A client's DP-SGD steps in one round: K, or with local epochs E, ceil(E·n_i/B).

    An epoch is n_i / B expected Poisson batches of rate q = B / n_i. With n_i < B the rate
    is capped at 1 (every step sees the whole shard), so an epoch is one step:
    ceil(E·max(n_i, B)/B). Never fewer than one step per phase. The product is rounded to
    9 decimals first, so 0.1·30/3 is one step, not two.
    """
    if local_epochs is None:
        steps = local_steps
    else:
        if not local_epochs > 0:
            raise ValueError(f"local_epochs={local_epochs!r} is invalid: expected a number > 0")
        if num_records < 1 or batch_size < 1:
            raise ValueError(f"num_records={num_records!r}, batch_size={batch_size!r} are invalid: expected integers >= 1")
        steps = math.ceil(round(local_epochs * max(num_records, batch_size) / batch_size, 9))
    return max(phases, steps)


def round_learning_rate(lr: float, decay: float, round_idx: int) -> float:
    """The learning rate of round ``round_idx`` (1-based): lr · decay^(r−1).

    LA-LoRA's code multiplies lr by 0.99 at the start of every round (arXiv 2602.19926,
    reference DP_lora.py); here round 1 trains at the configured lr.
    """
    if round_idx < 1:
        raise ValueError(f"round_idx={round_idx!r} is invalid: expected an integer >= 1")
    return lr * decay ** (round_idx - 1)


def factor_learning_rates(method: Method, lr: float, head_lr: float, b_lr_ratio: float) -> dict[str, float]:
    """Per-factor learning rates: η for A, ratio·η for B under LA-LoRA (its code uses 2η)."""
    b_lr = lr * b_lr_ratio if method.scaled_b_lr else lr
    return {"A": lr, "B": b_lr, "head": head_lr}
