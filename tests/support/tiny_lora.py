"""A tiny peft LoRA model and a LocalTrainer on it: the one-layer fixture of the method tests."""

import peft
import torch
from torch import nn

from fedsim.methods.registry import get_method
from fedsim.client.trainer import ClientShard, DPSettings, LocalTrainer, OptimSettings


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
    trainer = LocalTrainer(
        model=model, factors=factors, method=get_method(method),
        dp=DPSettings(batch_size=16, noise_multiplier=noise, max_grad_norm=clip),
        optim=OptimSettings(optimizer, lr, lr, 2.0, 1.0), device=torch.device("cpu"),
    )
    return trainer, ClientShard.build(1, (x,), y, 16), factors


def train(trainer, shard, steps, round_idx=1, after_step=None):
    """One phase-1 round from the trainer's current state as the global state."""
    global_vector = torch.cat([trainer.params[n].detach().reshape(-1) for n in trainer.method.all_sent_names(trainer.factors)])
    phase = trainer.method.phases(round_idx)[0]
    return trainer.train_phase(shard, global_vector, phase, steps, after_step=after_step)


def snapshot(factors):
    return {f: {n: p.detach().clone() for n, p in named.items()} for f, named in factors.items()}
