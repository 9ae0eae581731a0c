"""LA-LoRA's Laplacian smoothing: it solves (I − σΔ) x = g and keeps the mean."""

import torch

from fedsim.methods.smoothing import inverse_gain_1d, inverse_gain_2d, smooth_1d, smooth_2d


def periodic_laplacian_1d(x: torch.Tensor) -> torch.Tensor:
    return torch.roll(x, 1) + torch.roll(x, -1) - 2 * x


def periodic_laplacian_2d(x: torch.Tensor) -> torch.Tensor:
    return sum(torch.roll(x, s, dims=d) for s in (1, -1) for d in (0, 1)) - 4 * x


def test_smooth_1d_solves_the_laplacian_system():
    g = torch.randn(37, dtype=torch.float64)
    x = smooth_1d(g, 1.5)
    torch.testing.assert_close(x - 1.5 * periodic_laplacian_1d(x), g)


def test_smooth_2d_solves_the_five_point_system():
    g = torch.randn(8, 13, dtype=torch.float64)
    x = smooth_2d(g, 0.7)
    torch.testing.assert_close(x - 0.7 * periodic_laplacian_2d(x), g)


def test_dc_gain_is_one_and_high_frequencies_are_damped():
    assert inverse_gain_1d(16, 1.0)[0] == 1.0
    assert inverse_gain_2d(8, 8, 1.0)[0, 0] == 1.0
    constant = torch.full((6, 10), 3.0)
    torch.testing.assert_close(smooth_2d(constant, 2.0), constant)
    noise = torch.randn(64, 64)
    assert smooth_2d(noise, 1.0).var() < 0.5 * noise.var()


def test_zero_strength_is_identity_and_shapes_are_kept():
    g = torch.randn(4, 5, 6)
    assert smooth_1d(g, 0.0) is g
    assert smooth_1d(g, 1.0).shape == g.shape
    assert smooth_1d(g, 1.0).dtype == g.dtype
