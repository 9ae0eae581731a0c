"""DEeR's noise regulator, scaled so that the claimed client-level guarantee holds.

DEeR (arXiv 2410.12926, Sec. 3.3) notices that noise added to one LoRA factor reaches the
product B·A multiplied by the other factor, and shapes it: draw W ∈ R^{d_out×d_in} with an
isotropic standard deviation and add

    ξ_B = W Aᵀ(AAᵀ)⁻¹   to B's update (A frozen),   so that ξ_B·A = W·P_A,
    ξ_A = (BᵀB)⁻¹Bᵀ W   to A's update (B frozen),   so that B·ξ_A = P_B·W,

with P the projection on the frozen factor's row (column) space.

What this does to the guarantee (the reference code does not say): with W's entries
N(0, s²), each row of ξ_B is N(0, s²·(AAᵀ)⁻¹) and each column of ξ_A is N(0, s²·(BᵀB)⁻¹).
A Gaussian mechanism with covariance Σ and L2 sensitivity S has the privacy of an isotropic
one with multiplier √λ_min(Σ)/S: the noise is weakest along the frozen factor's largest
singular direction, where its standard deviation is s/σ_max. So the regulated noise gives
multiplier z only if s = z·S·σ_max(frozen) (:func:`regulator_scale`); then Σ ⪰ (zS)²·I,
i.e. the regulated release is the isotropic one plus independent extra noise
(post-processing), and the ledger may record z. Used as published (s = zS) the effective
multiplier would be z/σ_max — larger or smaller than claimed depending on the factor's scale.

A consequence worth knowing: with the guarantee restored, the noise on the product B·A is
s·‖W P‖ ≈ zS·σ_max·√(d·r), never below the isotropic scheme's zS·√d·‖frozen‖_F; the two
match when the frozen factor's singular values are equal (as for a random A). A frozen factor
with a (numerically) zero singular value cannot carry the shaped noise at all; that layer
falls back to isotropic noise, which keeps the guarantee.

Shares: clients hold the same frozen factor within a phase, so the map M is common and m
shares of standard deviation s/√m sum to the regulated noise of standard deviation s.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

CONDITION_LIMIT = 1e6
"""Above this ratio of the frozen factor's extreme singular values, use isotropic noise."""


def lora_partner(name: str) -> str | None:
    """The other factor of a LoRA parameter name (lora_A <-> lora_B), None for other tensors."""
    if ".lora_A." in name:
        return name.replace(".lora_A.", ".lora_B.")
    if ".lora_B." in name:
        return name.replace(".lora_B.", ".lora_A.")
    return None


def regulator_scale(frozen: torch.Tensor, std: float) -> float | None:
    """The standard deviation s of W for which the shaped noise is at least ``std`` in every direction.

    s = std · σ_max(frozen); None when the frozen factor is too ill-conditioned (its
    smallest singular value below σ_max / CONDITION_LIMIT) to shape the noise.
    """
    singular = torch.linalg.svdvals(frozen.double())
    if singular.numel() == 0 or singular[-1] <= singular[0] / CONDITION_LIMIT:
        return None
    return std * float(singular[0])


def shaped_noise(trained_name: str, shape: torch.Size, frozen: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Noise for one trained factor: DEeR's ξ_B (for lora_B) or ξ_A (for lora_A), or isotropic.

    ``frozen`` is the other factor of the same LoRA module (A is r×d_in, B is d_out×r).
    Every direction of the returned noise has standard deviation >= ``std``.
    """
    scale = regulator_scale(frozen, std)
    if scale is None:
        return std * torch.randn(shape, generator=generator, dtype=torch.float64, device=frozen.device).float()
    frozen = frozen.double()
    if ".lora_B." in trained_name:  # ξ_B = W Aᵀ(AAᵀ)⁻¹, W ∈ R^{d_out×d_in}
        w = scale * torch.randn((shape[0], frozen.shape[1]), generator=generator, dtype=torch.float64, device=frozen.device)
        noise = torch.linalg.solve(frozen @ frozen.T, frozen @ w.T).T
    else:  # ξ_A = (BᵀB)⁻¹Bᵀ W, W ∈ R^{d_out×d_in}
        w = scale * torch.randn((frozen.shape[0], shape[1]), generator=generator, dtype=torch.float64, device=frozen.device)
        noise = torch.linalg.solve(frozen.T @ frozen, frozen.T @ w)
    return noise.float()


def regulated_noise(
    layout: Sequence[tuple[str, torch.Size]],
    frozen: Mapping[str, torch.Tensor],
    std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Flat noise over a sent vector's ``layout`` (name, shape): shaped on LoRA factors, isotropic elsewhere.

    ``frozen`` maps parameter names to the current (global) values of the factors frozen in
    this phase. The result's covariance is ⪰ std²·I, so adding it to an update clipped to
    S is a Gaussian mechanism with multiplier at least std / S.
    """
    parts = []
    for name, shape in layout:
        partner = lora_partner(name)
        if partner is not None and partner in frozen:
            parts.append(shaped_noise(name, shape, frozen[partner], std, generator).reshape(-1))
        else:
            parts.append(std * torch.randn(int(torch.Size(shape).numel()), generator=generator))
    return torch.cat(parts)
