"""LA-LoRA's low-pass filter: Laplacian smoothing of a noisy gradient.

LA-LoRA (arXiv 2602.19926) smooths every privatized gradient before the optimizer step:

    Ĝ = (I − σ_ls Δ)⁻¹ G,

with Δ the periodic discrete Laplacian (Osher et al. 2018, "Laplacian Smoothing Gradient
Descent"). Δ is diagonal in the Fourier basis, so the solve is a pointwise division of the
spectrum by the filter's inverse gain:

    1-D, stencil (1, −2, 1):       1 + 4 σ_ls sin²(π k / n)
    2-D, 5-point stencil:          1 + 4 σ_ls (sin²(π k / H) + sin²(π l / W))

The DC gain is 1 (the mean is kept); high frequencies, where isotropic DP noise carries as
much energy as anywhere else but the signal carries little, are damped. The input is the
output of the Gaussian mechanism, so smoothing is post-processing and costs no privacy.

Two ways to use the smoothed gradient Ĝ of the raw noisy gradient G
(:data:`fedsim.methods.registry.SMOOTHING_MODES`):

- ``replace``: the optimizer steps on Ĝ instead of G (the paper's description);
- ``reference``: the published code (github junkangLiu0/LA-LORA, ``DP_lora.py``,
  ``update_FedAvg_AL``): a plain step θ ← θ − η Ĝ at the round's base rate η, then the
  optimizer's own step on G. Both are functions of G only: post-processing.
"""

from __future__ import annotations

import torch


def inverse_gain_1d(n: int, sigma: float, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1 + 4σ sin²(πk/n) for k = 0..n//2 (the rfft frequencies of a length-n signal)."""
    k = torch.arange(n // 2 + 1, dtype=dtype)
    return 1.0 + 4.0 * sigma * torch.sin(torch.pi * k / n) ** 2


def inverse_gain_2d(height: int, width: int, sigma: float, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1 + 4σ(sin²(πk/H) + sin²(πl/W)) on the (H, W//2+1) rfft2 grid."""
    k = torch.arange(height, dtype=dtype).unsqueeze(1)
    l = torch.arange(width // 2 + 1, dtype=dtype).unsqueeze(0)
    return 1.0 + 4.0 * sigma * (torch.sin(torch.pi * k / height) ** 2 + torch.sin(torch.pi * l / width) ** 2)


def smooth_1d(gradient: torch.Tensor, sigma: float) -> torch.Tensor:
    """Laplacian smoothing of the flattened tensor with the 1-D periodic stencil."""
    if sigma == 0 or gradient.numel() < 2:
        return gradient
    flat = gradient.reshape(-1).to(torch.float64)
    spectrum = torch.fft.rfft(flat) / inverse_gain_1d(flat.numel(), sigma).to(flat.device)
    return torch.fft.irfft(spectrum, n=flat.numel()).to(gradient.dtype).reshape(gradient.shape)


def smooth_2d(gradient: torch.Tensor, sigma: float) -> torch.Tensor:
    """Laplacian smoothing of a matrix (a LoRA factor) with the 2-D 5-point stencil."""
    if gradient.dim() != 2:
        raise ValueError(f"smooth_2d expects a matrix, got shape {tuple(gradient.shape)}")
    if sigma == 0:
        return gradient
    height, width = gradient.shape
    matrix = gradient.to(torch.float64)
    spectrum = torch.fft.rfft2(matrix) / inverse_gain_2d(height, width, sigma).to(matrix.device)
    return torch.fft.irfft2(spectrum, s=(height, width)).to(gradient.dtype)


def smooth_gradient(gradient: torch.Tensor, sigma: float, *, matrix: bool) -> torch.Tensor:
    """Ĝ = (I − σΔ)⁻¹ G: the 2-D stencil for a LoRA factor (``matrix`` and 2-D), else 1-D."""
    if matrix and gradient.dim() == 2:
        return smooth_2d(gradient, sigma)
    return smooth_1d(gradient, sigma)
