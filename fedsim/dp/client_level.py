"""Client-level DP with distributed noise: DP-FedAvg whose Gaussian noise is added in shares.

DP-FedAvg (McMahan et al., ICLR 2018, "Learning Differentially Private Recurrent Language
Models", Alg. 1): each round, every client in the cohort clips its whole update to L2 norm
S; the sum of the clipped updates has sensitivity S to adding or removing one client, and
Gaussian noise N(0, (zS)²) makes the round a Gaussian mechanism with noise multiplier z,
subsampled at rate q = cohort / population.

Here no party adds the whole noise: each of the m planned cohort members adds its share
N(0, (zS)²/m) *before* secure aggregation masks its update, so only the secure sum carries
the full noise and the server never sees a less-noisy vector (distributed DP, as in Kairouz
et al., ICML 2021, "The Distributed Discrete Gaussian Mechanism", with continuous shares
encoded by the fixed-point code). Dropouts lower the noise: s survivors' shares add up to
N(0, s·(zS)²/m), i.e. the realized multiplier z·√(s/m) (:func:`realized_noise_multiplier`),
which is what the ledger must record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from fedsim.methods.deer import regulated_noise
from fedsim.methods.registry import Method, Phase
from fedsim.models.lora_params import parameters_by_name


def clip_update(update: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale ``update`` to L2 norm at most ``clip_norm`` (McMahan et al. 2018, Alg. 1, ClipFn)."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm={clip_norm!r} is invalid: expected a number > 0")
    norm = float(torch.linalg.vector_norm(update))
    return update * min(1.0, clip_norm / norm) if norm > 0 else update.clone()


def noise_share_std(noise_multiplier: float, clip_norm: float, cohort: int) -> float:
    """Standard deviation of one client's share: zS/√m, so m shares sum to N(0, (zS)²)."""
    if cohort < 1:
        raise ValueError(f"cohort={cohort!r} is invalid: expected an integer >= 1")
    return noise_multiplier * clip_norm / math.sqrt(cohort)


def realized_noise_multiplier(noise_multiplier: float, planned: int, survivors: int) -> float:
    """The multiplier of the noise actually in the sum when ``survivors`` shares of std zS/√m arrive.

    Variance s·(zS)²/m over sensitivity S gives z·√(s/m); it is below the planned z as soon
    as fewer than m shares arrive (dropouts, a small Poisson cohort), and the ledger records
    this figure, not the planned one.
    """
    if planned < 1 or survivors < 0:
        raise ValueError(f"survivors={survivors!r}, planned={planned!r} are invalid: expected survivors >= 0, planned >= 1")
    return noise_multiplier * math.sqrt(survivors / planned)


def add_noise_share(update: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``update`` plus isotropic Gaussian noise of standard deviation ``std`` (one client's share)."""
    noise = torch.randn(update.shape, generator=generator, device=update.device, dtype=update.dtype)
    return update + std * noise


@dataclass
class ClientLevelNoise:
    """Client-level DP on one cohort member's update: clip to S, add this client's noise share.

    Shares of standard deviation zS/√m (:func:`noise_share_std`), m the planned cohort;
    shaped by DEeR's regulator (:mod:`fedsim.methods.deer`) for methods with ``noise_regulator``;
    the shaped noise is at least as large as the isotropic share in every direction. The
    frozen factors' current values are the global ones: a phase never trains them.
    """

    clip: float
    std: float
    method: Method
    factors: Mapping[str, Mapping[str, torch.nn.Parameter]]
    generator: torch.Generator

    def apply(self, update: torch.Tensor, phase: Phase) -> torch.Tensor:
        """The clipped update plus this client's (shaped, for DEeR) noise share."""
        clipped = clip_update(update.cpu(), self.clip)
        if not self.method.noise_regulator:
            return add_noise_share(clipped, self.std, self.generator)
        params = parameters_by_name(self.factors)
        layout = [(n, params[n].shape) for n in phase.sent_names(self.factors)]
        frozen = {n: p.detach().cpu() for f, named in self.factors.items() if f not in phase.sent for n, p in named.items()}
        return clipped + regulated_noise(layout, frozen, self.std, self.generator)
