"""White-box gradient canaries, and the ``before_step`` hook that puts them through DP-SGD.

Steinke, Nasr & Jagielski (NeurIPS 2023), Sec. 6 ("white-box" auditing of DP-SGD): a canary
is a per-sample gradient chosen by the auditor — here a Dirac canary, norm C (the run's
``max_grad_norm``) on one coordinate of the released parameters (LoRA A, B and the head),
a different coordinate for each canary. Each canary is a member (part of the audited
client's data) independently with probability ½: those coins are the secret S the audit
tries to recover, drawn from :class:`~fedsim.dp.randomness.SecretRandom`.

A member canary is a record like any other: at each local step it enters the Poisson
sample independently with the client's record rate q, and its gradient is appended to every
active parameter's ``p.grad_sample`` (:class:`CanaryInjector`, the trainer's ``before_step``
hook), so it goes through the real per-sample clipping, noise, smoothing and optimizer step.
Restricted to a step's active factors (LA-LoRA's alternation, RoLoRA's rounds, DEeR's
phases), a canary whose coordinate lies in an inactive factor has a zero gradient at that
step, so it is not injected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.audit.errors import AuditError
from fedsim.dp.randomness import SecretRandom

__all__ = ["Canaries", "CanaryInjector", "draw_canaries"]


@dataclass(frozen=True)
class Canaries:
    """``count`` Dirac gradient canaries: canary i is ``norm`` at flat index ``offsets[i]`` of
    parameter ``names[i]``; ``members[i]`` says whether it is in the training data (secret)."""

    names: tuple[str, ...]
    offsets: np.ndarray
    members: np.ndarray
    norm: float

    @property
    def count(self) -> int:
        return len(self.names)

    def of_parameter(self, name: str) -> np.ndarray:
        """Indices of the canaries that live in parameter ``name``."""
        return np.flatnonzero(np.asarray(self.names) == name)


def draw_canaries(sizes: Mapping[str, int], count: int, norm: float, rng: SecretRandom) -> Canaries:
    """``count`` canaries on distinct coordinates, uniform over the parameters of ``sizes``
    (name → number of values, in the released layout's order), each a member w.p. ½."""
    total = sum(sizes.values())
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= total:
        raise AuditError("canaries", count, f"an integer in [2, {total}] (one distinct coordinate of the released parameters each)")
    if not (np.isfinite(norm) and norm > 0):
        raise ValueError(f"norm={norm!r} is invalid: expected a number > 0 (the clipping norm C)")
    flat = np.sort(np.asarray(rng.sample_without_replacement(total, count), dtype=np.int64))
    names = list(sizes)
    starts = np.cumsum([0] + [sizes[n] for n in names])
    which = np.searchsorted(starts, flat, side="right") - 1
    members = rng.bernoulli_mask(count, 0.5).numpy().astype(bool)
    return Canaries(tuple(names[w] for w in which), flat - starts[which], members, float(norm))


class CanaryInjector:
    """The ``before_step`` hook: append the member canaries that enter this step's Poisson sample.

    ``params``: the trainer's parameters by name (``LocalTrainer.params``). ``entered[i]``
    counts the steps canary i went into (zero for non-members).
    """

    def __init__(self, canaries: Canaries, params: Mapping[str, torch.nn.Parameter], sample_rate: float, rng: SecretRandom) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate!r} is invalid: expected a number in (0, 1]")
        self.canaries = canaries
        self.sample_rate = sample_rate
        self.rng = rng
        self._name_of = {id(p): name for name, p in params.items()}
        unknown = sorted(set(canaries.names) - set(params))
        if unknown:
            raise ValueError(f"canary parameters {unknown} are not trained parameters")
        self._members_of = {name: canaries.of_parameter(name)[canaries.members[canaries.of_parameter(name)]] for name in params}
        self.entered = np.zeros(canaries.count, dtype=np.int64)

    def __call__(self, step: int, params: Sequence[torch.nn.Parameter]) -> None:
        chosen = []
        for p in params:
            candidates = self._members_of[self._name_of[id(p)]]
            coins = self.rng.bernoulli_mask(len(candidates), self.sample_rate).numpy()
            chosen.append(candidates[coins])
        rows = sum(len(c) for c in chosen)
        if rows == 0:
            return
        row = 0
        for p, ids in zip(params, chosen):
            current = p.grad_sample if isinstance(p.grad_sample, torch.Tensor) else torch.cat(p.grad_sample, dim=0)
            block = torch.zeros((rows, p.numel()), dtype=current.dtype, device=current.device)
            if len(ids):
                index = torch.arange(row, row + len(ids), device=current.device)
                offsets = torch.as_tensor(self.canaries.offsets[ids], device=current.device)
                block[index, offsets] = self.canaries.norm
                row += len(ids)
            p.grad_sample = torch.cat([current, block.view(rows, *p.shape)], dim=0)
        self.entered[np.concatenate(chosen)] += 1
