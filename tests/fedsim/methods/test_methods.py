"""Invariants of each method's schedule (client-level DP: tests/fedsim/dp/test_skellam.py)."""

import pytest
import torch

from fedsim.methods.registry import METHOD_TABLE, get_method, phase_steps
from tests.support.tiny_lora import snapshot, tiny_client


def lora_partner(name: str) -> str:
    """The lora_A parameter of the same LoRA module as a lora_B name."""
    return name.replace(".lora_B.", ".lora_A.")


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


