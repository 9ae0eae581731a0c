"""The Opacus traps of alternating LoRA factors (one layer: LocalTrainer on a tiny peft model).

- the inactive factor must be bit-identical after every step;
- no parameter may move by a gradient that was not clipped and noised.
"""

import pytest
import torch

from fedsim.client.trainer import OptimSettings
from tests.support.tiny_lora import snapshot, tiny_client, train


@pytest.mark.parametrize("method", ["la-lora", "ffa-lora", "dp-lora"])
def test_only_active_factors_move_at_each_step(method):
    client, shard, factors = tiny_client(method, noise=1.0, clip=1.0)
    before = [snapshot(factors)]
    seen = []

    def after_step(step, active):
        now = snapshot(factors)
        for factor, named in now.items():
            changed = any(not torch.equal(named[n], before[-1][factor][n]) for n in named)
            if factor not in active:
                assert not changed, f"step {step}: inactive factor {factor} moved"
            elif factor in client.method.trainable:
                assert changed, f"step {step}: active factor {factor} did not move"
        seen.append(active)
        before.append(now)

    train(client, shard, 6, after_step=after_step)
    if method == "la-lora":
        assert [sorted(a) for a in seen] == [["B", "head"], ["A", "head"]] * 3
    if method == "ffa-lora":
        assert all("A" not in a for a in seen)


def test_no_parameter_moves_by_an_unclipped_gradient():
    """With σ=0, SGD(lr=1) and C tiny, a step moves the parameters by at most C·|batch|/E[B]."""
    clip = 1e-6
    client, shard, factors = tiny_client("la-lora", noise=0.0, clip=clip, optimizer="sgd", lr=1.0)
    client.optim = OptimSettings("sgd", 1.0, 1.0, 1.0, 0.0)  # no ratio, no smoothing: plain clipped SGD
    previous = [snapshot(factors)]
    sizes = []
    batches = shard.batches

    def counting():
        for batch in batches:
            sizes.append(len(batch[-1]))
            yield batch

    shard.batches = counting()

    def after_step(step, active):
        now = snapshot(factors)
        moved = torch.cat([(now[f][n] - previous[-1][f][n]).reshape(-1) for f in now for n in now[f]])
        bound = clip * sizes[step] / 16
        assert moved.norm() <= bound * (1 + 1e-4) + 1e-12, f"step {step} moved {moved.norm():.3g} > {bound:.3g}"
        previous.append(now)

    train(client, shard, 6, after_step=after_step)


def test_round_update_covers_only_sent_factors():
    client, shard, factors = tiny_client("ffa-lora", noise=1.0, clip=1.0)
    sent = client.method.phases(1)[0].sent_names(factors)
    assert not any("lora_A" in n for n in sent)
    a_before = snapshot(factors)["A"]
    update, report = train(client, shard, 3)
    assert update.numel() == sum(client.params[n].numel() for n in sent) and update.abs().sum() > 0
    assert report.steps == 3 and report.sample_rate == pytest.approx(16 / 64)
    assert all(torch.equal(a_before[n], p) for n, p in factors["A"].items())


def test_an_empty_poisson_sample_is_still_a_noisy_step():
    """q·n small enough that a batch can be empty: the step adds noise, it is not skipped."""
    client, shard, factors = tiny_client("dp-lora", noise=1.0, clip=1.0, optimizer="sgd", lr=1.0)
    empty = (torch.zeros((0, 6)), torch.zeros((0,), dtype=torch.long))
    shard.batches = iter([empty] * 2)
    before = snapshot(factors)
    update, report = train(client, shard, 2)
    assert report.steps == 2
    assert update.abs().sum() > 0  # pure noise moved the parameters
    assert all(not torch.equal(before["A"][n], p) for n, p in factors["A"].items())


def test_noise_and_sampling_do_not_follow_the_public_seed():
    """Same public seed, same data, same init: two clients still draw different noise and samples."""
    updates = []
    for _ in range(2):
        client, shard, _ = tiny_client("dp-lora", noise=1.0, clip=1.0)
        updates.append(train(client, shard, 2)[0])
    assert not torch.equal(updates[0], updates[1])
