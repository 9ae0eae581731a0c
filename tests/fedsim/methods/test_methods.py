"""Invariants of each method's schedule and of DEeR's regulator (client-level DP shares:
tests/fedsim/dp/test_client_level.py)."""

import math

import pytest
import torch

from fedsim.methods.registry import METHOD_TABLE, get_method, phase_steps
from fedsim.methods.deer import lora_partner, regulated_noise, regulator_scale, shaped_noise
from tests.support.tiny_lora import snapshot, tiny_client


def global_vector(trainer):
    return torch.cat([trainer.params[n].detach().reshape(-1) for n in trainer.method.all_sent_names(trainer.factors)])


def test_rolora_sends_one_factor_per_round_starting_with_b():
    method = get_method("rolora")
    sent = [sorted(p.sent) for r in range(1, 5) for p in method.phases(r)]
    assert sent == [["B", "head"], ["A", "head"]] * 2


def test_deer_has_two_stages_b_then_a_and_single_phase_methods_one():
    assert [sorted(p.sent) for p in get_method("deer").phases(3)] == [["B", "head"], ["A", "head"]]
    for name in ("dp-lora", "ffa-lora", "la-lora"):
        (phase,) = get_method(name).phases(7)
        assert phase.sent == get_method(name).trainable


def test_local_steps_are_split_over_phases():
    assert phase_steps(6, 2) == [3, 3] and phase_steps(7, 2) == [4, 3] and phase_steps(5, 1) == [5]
    with pytest.raises(ValueError, match="local_steps=1"):
        phase_steps(1, 2)


@pytest.mark.parametrize("name", sorted(METHOD_TABLE))
def test_frozen_factors_never_move_in_a_phase(name):
    """ffa-lora never changes A; rolora/deer phases leave the unsent factor bit-identical."""
    trainer, shard, factors = tiny_client(name, noise=1.0, clip=1.0)
    for round_idx in (1, 2):
        for phase, steps in zip(trainer.method.phases(round_idx), phase_steps(4, len(trainer.method.phases(round_idx)))):
            before = snapshot(factors)
            update, _ = trainer.train_phase(shard, global_vector(trainer), phase, steps)
            after = snapshot(factors)
            for factor in ("A", "B", "head"):
                moved = any(not torch.equal(before[factor][n], after[factor][n]) for n in after[factor])
                assert moved == (factor in phase.sent), (name, round_idx, factor)
            assert update.numel() == sum(trainer.params[n].numel() for n in phase.sent_names(factors))


def test_deer_stage_aggregate_has_no_deviation():
    """With A frozen and common, mean_i(B_i)·A == mean_i(B_i·A): the deviation eliminator's claim."""
    updates, products = [], []
    for _ in range(3):
        trainer, shard, factors = tiny_client("deer", noise=1.0, clip=1.0)
        phase = trainer.method.phases(1)[0]
        start = global_vector(trainer)
        trainer.train_phase(shard, start, phase, 2)
        b = {n: p.detach().clone() for n, p in factors["B"].items()}
        a = {n: p.detach() for n, p in factors["A"].items()}
        products.append({n: b[n] @ a[lora_partner(n)] for n in b})
        updates.append(b)
    for n in updates[0]:
        mean_b = sum(u[n] for u in updates) / 3
        mean_product = sum(p[n] for p in products) / 3
        torch.testing.assert_close(mean_b @ a[lora_partner(n)], mean_product, rtol=1e-5, atol=1e-6)


def min_direction_std(samples: torch.Tensor) -> float:
    """sqrt of the smallest eigenvalue of the sample covariance of rows."""
    return float(torch.linalg.eigvalsh(torch.cov(samples.T.double()))[0]) ** 0.5


@pytest.mark.parametrize("trained", ["B", "A"])
def test_regulated_noise_is_at_least_std_in_every_direction(trained):
    g = torch.Generator().manual_seed(1)
    r, d = 3, 5
    frozen = torch.diag(torch.tensor([4.0, 1.0, 0.5]))  # spread singular values: scaling matters
    if trained == "B":  # A frozen (r×d_in), ξ_B rows ~ N(0, s²(AAᵀ)⁻¹)
        a = torch.cat([frozen, torch.zeros(r, d - r)], dim=1)
        draws = torch.stack([shaped_noise("m.lora_B.default.weight", torch.Size((1, r)), a, 0.7, g)[0] for _ in range(6000)])
    else:  # B frozen (d_out×r), ξ_A columns ~ N(0, s²(BᵀB)⁻¹)
        b = torch.cat([frozen, torch.zeros(d - r, r)], dim=0)
        draws = torch.stack([shaped_noise("m.lora_A.default.weight", torch.Size((r, 1)), b, 0.7, g)[:, 0] for _ in range(6000)])
    assert regulator_scale(frozen, 0.7) == pytest.approx(0.7 * 4.0)
    # The weakest direction is the frozen factor's largest singular direction: std exactly 0.7.
    assert min_direction_std(draws) == pytest.approx(0.7, rel=0.05)
    # Unscaled (DEeR as published, s = std) that direction would get 0.7 / 4.
    assert min_direction_std(draws) > 0.7 / 4 * 2


def test_regulated_noise_shapes_the_product_noise_as_published():
    """ξ_B·A = W·P_A: the product noise lies in A's row space."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 6, generator=g)
    xi = shaped_noise("m.lora_B.default.weight", torch.Size((4, 2)), a, 1.0, g)
    product = xi.double() @ a.double()
    projector = a.double().T @ torch.linalg.solve(a.double() @ a.double().T, a.double())
    torch.testing.assert_close(product @ projector, product, rtol=1e-6, atol=1e-8)


def test_rank_deficient_frozen_factor_falls_back_to_isotropic_noise():
    g = torch.Generator().manual_seed(3)
    b = torch.zeros(4, 2)  # LoRA's B at init: cannot shape anything
    assert regulator_scale(b, 1.0) is None
    layout = [("m.lora_A.default.weight", torch.Size((2, 3))), ("head.weight", torch.Size((3,)))]
    noise = regulated_noise(layout, {"m.lora_B.default.weight": b}, 1.0, g)
    assert noise.shape == (9,) and torch.isfinite(noise).all()
    samples = torch.stack([regulated_noise(layout, {"m.lora_B.default.weight": b}, 1.0, g) for _ in range(4000)])
    assert min_direction_std(samples) == pytest.approx(1.0, rel=0.1)
    assert math.isclose(float(samples.std()), 1.0, rel_tol=0.05)
