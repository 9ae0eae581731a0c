"""What the auditor sees, and the score it gives each canary (Steinke et al. 2023, Sec. 6).

Three observers, from the strongest view to the one a federated server really has:

- ``step`` (:class:`StepObserver`, the trainer's ``after_step`` hook): every noisy gradient
  of the audited client — the release DP-SGD's accounting covers (each step is one
  Poisson-subsampled Gaussian mechanism, composed adaptively). Score: the sum over steps of
  the noisy gradient at the canary's coordinate.
- ``client-update``: the client's update after each phase (local − global), what leaves the
  client. Score: the sum over phases of −update / lr at the coordinate (a gradient step
  moves *against* the gradient; dividing by the factor's learning rate puts A, B and the
  head on one scale). Under SGD this is exactly the sum of the noisy gradients; under AdamW
  each step moves a coordinate by about ±lr in the direction of its (bias-corrected) first
  moment, so the score counts the steps pushed by the canary — monotone in it, not linear.
- ``aggregate``: the sum of the cohort's updates of each phase (what the server learns
  under secure aggregation); same score.

Every score is a function of the release and of public facts (the canaries' coordinates,
the learning rates, the smoothing strength), so the guesses built on it are
post-processing, as the audit's theorem requires. LA-LoRA's Laplacian smoothing is an
invertible public filter applied after the noise: the observers undo it where that is exact
(every noisy gradient; the SGD update, a sum of smoothed gradients), recovering the
Gaussian mechanism's own output, the strongest view of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedsim.audit.canaries import Canaries
from fedsim.dp.optimizer import MATRIX_FACTORS
from fedsim.methods.smoothing import inverse_gain_1d, inverse_gain_2d

__all__ = ["OBSERVERS", "StepObserver", "UpdateObserver", "unsmooth"]

STEP = "step"
CLIENT_UPDATE = "client-update"
AGGREGATE = "aggregate"
OBSERVERS: tuple[str, ...] = (STEP, CLIENT_UPDATE, AGGREGATE)


def unsmooth(smoothed: torch.Tensor, sigma: float, *, matrix: bool) -> torch.Tensor:
    """Invert LA-LoRA's smoothing (:mod:`fedsim.methods.smoothing`): multiply the spectrum back
    by the inverse gain 1 + 4σ Σ sin²(πk/n) (Osher et al. 2018). ``matrix``: the 2-D filter
    (a LoRA factor's matrix), else the 1-D filter of the flattened tensor."""
    if sigma == 0:
        return smoothed
    if matrix:
        height, width = smoothed.shape
        values = smoothed.to(torch.float64)
        spectrum = torch.fft.rfft2(values) * inverse_gain_2d(height, width, sigma).to(values.device)
        return torch.fft.irfft2(spectrum, s=(height, width)).to(smoothed.dtype)
    if smoothed.numel() < 2:
        return smoothed
    flat = smoothed.reshape(-1).to(torch.float64)
    spectrum = torch.fft.rfft(flat) * inverse_gain_1d(flat.numel(), sigma).to(flat.device)
    return torch.fft.irfft(spectrum, n=flat.numel()).to(smoothed.dtype).reshape(smoothed.shape)


class _Scores:
    """Per-canary running scores, grouped by parameter."""

    def __init__(self, canaries: Canaries, factor_of: Mapping[str, str], smoothing: float) -> None:
        self.canaries = canaries
        self.scores = np.zeros(canaries.count, dtype=np.float64)
        self.smoothing = smoothing
        self._factor_of = factor_of
        self._groups = {name: canaries.of_parameter(name) for name in dict.fromkeys(canaries.names)}

    def _raw(self, name: str, value: torch.Tensor, undo_smoothing: bool) -> torch.Tensor:
        if not undo_smoothing or self.smoothing == 0:
            return value
        return unsmooth(value, self.smoothing, matrix=self._factor_of[name] in MATRIX_FACTORS and value.dim() == 2)

    def add(self, name: str, value: torch.Tensor, scale: float, undo_smoothing: bool) -> None:
        """scores of ``name``'s canaries += scale · value[offset] (value unsmoothed first if asked)."""
        ids = self._groups.get(name)
        if ids is None:
            return
        flat = self._raw(name, value.detach(), undo_smoothing).reshape(-1)
        picked = flat[torch.as_tensor(self.canaries.offsets[ids], device=flat.device)]
        self.scores[ids] += scale * picked.double().cpu().numpy()


class StepObserver(_Scores):
    """The ``after_step`` hook: score_i += the step's noisy gradient at canary i's coordinate.

    Reads ``p.grad`` after ``optimizer.step()``: the clipped, noised, scaled (1 / E[batch])
    and smoothed gradient; an inactive parameter has none that step. The 1 / E[batch] scale is
    the same for every parameter of a phase, so it changes no ranking.
    """

    def __init__(self, canaries: Canaries, params: Mapping[str, torch.nn.Parameter], factor_of: Mapping[str, str], smoothing: float) -> None:
        super().__init__(canaries, factor_of, smoothing)
        self._params = params

    def __call__(self, step: int, active: frozenset[str]) -> None:
        for name in self._groups:
            grad = self._params[name].grad
            if grad is not None:
                self.add(name, grad, 1.0, undo_smoothing=True)


class UpdateObserver(_Scores):
    """Scores from released updates: score_i += −update[coordinate_i] / lr of its factor.

    ``learning_rates``: by factor; ``linear``: the optimizer is SGD (the update is a sum of
    smoothed noisy gradients, so the smoothing is undone exactly); under AdamW it is not undone.
    """

    def __init__(
        self,
        canaries: Canaries,
        factor_of: Mapping[str, str],
        smoothing: float,
        learning_rates: Mapping[str, float],
        *,
        linear: bool,
    ) -> None:
        super().__init__(canaries, factor_of, smoothing)
        self._rates = learning_rates
        self._linear = linear

    def observe(self, update: torch.Tensor, names: Sequence[str], shapes: Mapping[str, torch.Size]) -> None:
        """Score one released update laid out as ``names`` (each of ``shapes[name]``), concatenated."""
        offset = 0
        for name in names:
            size = int(np.prod(shapes[name]))
            if name in self._groups:
                value = update[offset:offset + size].reshape(shapes[name])
                self.add(name, value, -1.0 / self._rates[self._factor_of[name]], undo_smoothing=self._linear)
            offset += size
        if offset != update.numel():
            raise ValueError(f"update has {update.numel()} values, the layout {offset}")
