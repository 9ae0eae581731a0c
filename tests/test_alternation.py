"""The Opacus traps of alternating LoRA factors (one layer: LocalClient on a tiny peft model).

- the inactive factor must be bit-identical after every step;
- no parameter may move by a gradient that was not clipped and noised.
"""

import peft
import pytest
import torch
from torch import nn

from fedsim.algorithms import get_method
from fedsim.client import DPSettings, LocalClient, OptimSettings


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 8)
        self.l2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.l2(torch.relu(self.l1(x)))))


def tiny_client(method: str, *, noise: float, clip: float, optimizer: str = "adamw", lr: float = 0.05):
    torch.manual_seed(0)
    model = peft.get_peft_model(TinyNet(), peft.LoraConfig(r=2, target_modules=["l1", "l2"], modules_to_save=["head"]))
    named = dict(model.named_parameters())
    factors = {
        "A": {n: p for n, p in named.items() if "lora_A" in n},
        "B": {n: p for n, p in named.items() if "lora_B" in n},
        "head": {n: p for n, p in named.items() if "modules_to_save" in n},
    }
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    client = LocalClient(
        client_id=1, model=model, factors=factors, method=get_method(method), inputs=(x,), labels=y,
        dp=DPSettings(batch_size=16, noise_multiplier=noise, max_grad_norm=clip),
        optim=OptimSettings(optimizer, lr, lr, 2.0, 1.0), device=torch.device("cpu"),
    )
    return client, factors


def snapshot(factors):
    return {f: {n: p.detach().clone() for n, p in named.items()} for f, named in factors.items()}


@pytest.mark.parametrize("method", ["la-lora", "ffa-lora", "dp-lora"])
def test_only_active_factors_move_at_each_step(method):
    client, factors = tiny_client(method, noise=1.0, clip=1.0)
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

    global_vector = torch.cat([client.params[n].detach().reshape(-1) for n in client.sent_names])
    client.train_round(global_vector, 6, after_step=after_step)
    if method == "la-lora":
        assert [sorted(a) for a in seen] == [["B", "head"], ["A", "head"]] * 3
    if method == "ffa-lora":
        assert all("A" not in a for a in seen)


def test_no_parameter_moves_by_an_unclipped_gradient():
    """With σ=0, SGD(lr=1) and C tiny, a step moves the parameters by at most C·|batch|/E[B]."""
    clip = 1e-6
    client, factors = tiny_client("la-lora", noise=0.0, clip=clip, optimizer="sgd", lr=1.0)
    client.optim = OptimSettings("sgd", 1.0, 1.0, 1.0, 0.0)  # no ratio, no smoothing: plain clipped SGD
    previous = [snapshot(factors)]
    sizes = []
    batches = client.batches

    def counting():
        for batch in batches:
            sizes.append(len(batch[-1]))
            yield batch

    client.batches = counting()

    def after_step(step, active):
        now = snapshot(factors)
        moved = torch.cat([(now[f][n] - previous[-1][f][n]).reshape(-1) for f in now for n in now[f]])
        bound = clip * sizes[step] / 16
        assert moved.norm() <= bound * (1 + 1e-4) + 1e-12, f"step {step} moved {moved.norm():.3g} > {bound:.3g}"
        previous.append(now)

    global_vector = torch.cat([client.params[n].detach().reshape(-1) for n in client.sent_names])
    client.train_round(global_vector, 6, after_step=after_step)


def test_round_update_covers_only_sent_factors():
    client, factors = tiny_client("ffa-lora", noise=1.0, clip=1.0)
    assert not any("lora_A" in n for n in client.sent_names)
    a_before = snapshot(factors)["A"]
    global_vector = torch.cat([client.params[n].detach().reshape(-1) for n in client.sent_names])
    update, report = client.train_round(global_vector, 3)
    assert update.numel() == global_vector.numel() and update.abs().sum() > 0
    assert report.steps == 3 and report.sample_rate == pytest.approx(16 / 64)
    assert all(torch.equal(a_before[n], p) for n, p in factors["A"].items())


def test_an_empty_poisson_sample_is_still_a_noisy_step():
    """q·n small enough that a batch can be empty: the step adds noise, it is not skipped."""
    client, factors = tiny_client("dp-lora", noise=1.0, clip=1.0, optimizer="sgd", lr=1.0)
    empty = (torch.zeros((0, 6)), torch.zeros((0,), dtype=torch.long))
    client.batches = iter([empty] * 2)
    before = snapshot(factors)
    global_vector = torch.cat([client.params[n].detach().reshape(-1) for n in client.sent_names])
    update, report = client.train_round(global_vector, 2)
    assert report.steps == 2
    assert update.abs().sum() > 0  # pure noise moved the parameters
    assert all(not torch.equal(before["A"][n], p) for n, p in factors["A"].items())


def test_noise_and_sampling_do_not_follow_the_public_seed():
    """Same public seed, same data, same init: two clients still draw different noise and samples."""
    updates = []
    for _ in range(2):
        client, _ = tiny_client("dp-lora", noise=1.0, clip=1.0)
        global_vector = torch.cat([client.params[n].detach().reshape(-1) for n in client.sent_names])
        updates.append(client.train_round(global_vector, 2)[0])
    assert not torch.equal(updates[0], updates[1])
