"""Opacus's DPOptimizer, restricted per step to the active LoRA factors.

Alternating methods (LA-LoRA) update A on some steps and B on others. Toggling
``requires_grad`` between steps breaks Opacus: a factor frozen after ``GradSampleModule``
wrapped the model still receives backward hooks but captured no activations ("No
activations detected"), and a stale ``.grad`` on the frozen factor would be applied by the
underlying optimizer as a raw, unclipped, un-noised step.

Here the trainable set is fixed for the whole run and a step chooses its *active* subset:

1. every managed parameter's ``.grad`` is dropped before the DP step, so the wrapped
   optimizer (which skips parameters whose ``.grad`` is None) can only move parameters
   whose gradient Opacus has just clipped and noised;
2. per-sample clipping (Abadi et al. 2016, Alg. 1) runs over the active parameters only —
   the norm bound C holds for exactly what this step releases;
3. Gaussian noise N(0, σ²C²) is added to the active parameters' summed gradients, which
   are then scaled by 1 / E[batch size]. The noise comes from the ChaCha20 CSPRNG of
   :mod:`fedsim.dp.randomness` (drawn on the CPU, copied to the parameters' device), never
   from a torch generator: :meth:`FactorwiseDPOptimizer.add_noise` replaces Opacus's;
4. optional smoothing (:mod:`fedsim.methods.smoothing`) post-processes the noisy gradient:
   ``replace`` hands the optimizer the smoothed gradient; ``reference`` (the published LA-LoRA
   code) first moves each active parameter by −``reference_lr``·smoothed, then hands the
   optimizer the raw noisy gradient.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from fedsim.dp.randomness import SecretRandom
from fedsim.methods.registry import REFERENCE, REPLACE, SMOOTHING_MODES
from fedsim.methods.smoothing import smooth_gradient

MATRIX_FACTORS = frozenset({"A", "B"})


class FactorwiseDPOptimizer(DPOptimizer):
    """A :class:`~opacus.optimizers.DPOptimizer` whose step covers only the active factors."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        factor_of: Mapping[torch.nn.Parameter, str],
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        rng: SecretRandom,
        smoothing: float = 0.0,
        smoothing_mode: str = REPLACE,
        reference_lr: float | None = None,
    ) -> None:
        if smoothing_mode not in SMOOTHING_MODES:
            raise ValueError(f"smoothing_mode={smoothing_mode!r} is invalid: expected one of {SMOOTHING_MODES}")
        if smoothing_mode == REFERENCE and smoothing > 0 and not (reference_lr is not None and reference_lr > 0):
            raise ValueError(f"reference_lr={reference_lr!r} is invalid: expected a number > 0 with smoothing_mode='reference'")
        # Set before DPOptimizer.__init__, which already reads ``self.params``.
        self._factor_of = {id(p): factor for p, factor in factor_of.items()}
        self._active: frozenset[str] = frozenset(self._factor_of.values())
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=None,  # never used: add_noise below draws from ``rng``
        )
        self.rng = rng
        self.smoothing = smoothing
        self.smoothing_mode = smoothing_mode
        self.reference_lr = reference_lr

    def set_active(self, factors: frozenset[str]) -> None:
        """Choose the factors the next step clips, noises and updates."""
        self._active = frozenset(factors)

    @property
    def managed_params(self) -> list[torch.nn.Parameter]:
        """All parameters this optimizer may ever update."""
        return [p for group in self.original_optimizer.param_groups for p in group["params"]]

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """Opacus's view of the parameters: the active ones only."""
        return [p for p in super().params if self._factor_of[id(p)] in self._active]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients and per-sample gradients of every managed parameter."""
        for p in self.managed_params:
            p.grad = None
            p.grad_sample = None
            p.summed_grad = None

    def add_noise(self) -> None:
        """p.grad <- p.summed_grad + N(0, σ²C²) for every active parameter (Abadi et al. 2016, Alg. 1).

        Opacus's :meth:`~opacus.optimizers.DPOptimizer.add_noise` with the noise from
        ``self.rng`` (ChaCha20) instead of a torch generator: one draw for all active
        parameters, in their fixed order, drawn in float64 and rounded once to the gradient's
        dtype (:meth:`SecretRandom.normal`, hardened against floating-point attacks as
        Opacus's ``secure_mode`` is), copied to its device. Same checks: a summed gradient used
        by an earlier step (no ``zero_grad`` in between) raises, and is marked as used.
        """
        params = self.params
        for p in params:
            _check_processed_flag(p.summed_grad)
        std = self.noise_multiplier * self.max_grad_norm
        if std > 0 and params:
            sizes = [p.summed_grad.numel() for p in params]
            reference = params[0].summed_grad
            flat = self.rng.normal(sum(sizes), std=std, dtype=reference.dtype, device=reference.device)
            for p, noise in zip(params, torch.split(flat, sizes)):
                p.grad = (p.summed_grad + noise.view_as(p.summed_grad).to(p.summed_grad)).view_as(p)
        else:
            for p in params:
                p.grad = p.summed_grad.clone().view_as(p)
        for p in params:
            _mark_as_processed(p.summed_grad)

    def pre_step(self, closure: Optional[Callable[[], float]] = None) -> Optional[bool]:
        for p in self.managed_params:
            p.grad = None
            if self._factor_of[id(p)] not in self._active:
                p.grad_sample = None
        ready = super().pre_step(closure)
        if ready and self.smoothing > 0:
            for p in self.params:
                smoothed = smooth_gradient(p.grad, self.smoothing, matrix=self._factor_of[id(p)] in MATRIX_FACTORS)
                if self.smoothing_mode == REPLACE:
                    p.grad = smoothed
                else:  # reference: a plain SGD step on the smoothed gradient; the optimizer gets the raw one
                    with torch.no_grad():
                        p.add_(smoothed, alpha=-self.reference_lr)
        return ready
