"""A small peft LoRA model with about a thousand released coordinates, as an audit federation.

Wide enough to hold a few hundred Dirac canaries on distinct coordinates (the one-layer
fixture of tests/support/tiny_lora.py has ~100); a clipping norm well above the real
records' gradient norms, so the canaries dominate their coordinates as they do in the
default model's ~10^5.
"""

import peft
import torch
from torch import nn

from fedsim.audit.driver import Federation
from fedsim.client.trainer import ClientShard, DPSettings, LocalTrainer, OptimSettings
from fedsim.methods.registry import get_method

RECORDS = 64
BATCH = 16


class WideNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(16, 64)
        self.l2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(torch.relu(self.l2(torch.relu(self.l1(x)))))


def wide_federation(method: str, *, noise: float, clip: float = 10.0, optimizer: str = "sgd", clients: int = 1, lr: float = 0.05) -> Federation:
    torch.manual_seed(0)
    model = peft.get_peft_model(WideNet(), peft.LoraConfig(r=4, target_modules=["l1", "l2"], modules_to_save=["head"]))
    named = dict(model.named_parameters())
    factors = {
        "A": {n: p for n, p in named.items() if "lora_A" in n},
        "B": {n: p for n, p in named.items() if "lora_B" in n},
        "head": {n: p for n, p in named.items() if "modules_to_save" in n},
    }
    trainer = LocalTrainer(
        model=model, factors=factors, method=get_method(method),
        dp=DPSettings(batch_size=BATCH, noise_multiplier=noise, max_grad_norm=clip),
        optim=OptimSettings(optimizer, lr, lr, 2.0, 1.0), device=torch.device("cpu"),
    )
    shards = [ClientShard.build(c, (torch.randn(RECORDS, 16),), torch.randint(0, 3, (RECORDS,)), BATCH) for c in range(1, clients + 1)]
    return Federation(trainer, shards)
