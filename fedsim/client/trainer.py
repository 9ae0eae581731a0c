"""One federated client: local DP-SGD on its own records with Opacus.

Sample-level DP (docs/architecture.md, "Privacy semantics"): every local step is one Poisson-subsampled
Gaussian mechanism on this client's records — Poisson sampling at rate q = B / n_i
(:func:`poisson_batches`: each record independently w.p. q), per-sample gradients (Opacus
``GradSampleModule``), per-sample clipping to C and Gaussian noise σC
(:class:`~fedsim.dp.optimizer.FactorwiseDPOptimizer`). The client object lives for the whole
run, so its sampler and noise streams continue across rounds and the server's ledger
composes every step the client actually ran.

Both the Poisson sample and the noise are drawn from the ChaCha20 CSPRNG keyed from the OS
(:class:`fedsim.dp.randomness.SecretRandom`), never from the run's public seed nor from a
torch generator: privacy amplification by subsampling needs the sample to be secret, and
noise predictable from a seed protects nothing.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch.utils.data import TensorDataset

from fedsim.dp.optimizer import FactorwiseDPOptimizer
from fedsim.dp.randomness import SecretRandom, secret_random
from fedsim.methods.registry import (
    REPLACE,
    Method,
    Phase,
    factor_learning_rates,
    round_learning_rate,
)
from fedsim.transport.payloads import RoundReport
from fedsim.transport.vectors import assign_flat, flatten

if TYPE_CHECKING:
    from fedsim.config import RunConfig

logger = logging.getLogger(__name__)

Prepare = Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD hyper-parameters of one client (Abadi et al. 2016, Algorithm 1)."""

    batch_size: int
    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class OptimSettings:
    """Local optimiser settings; ``b_lr_ratio`` and ``smoothing*`` only matter for LA-LoRA.

    Round r trains at every rate × ``lr_decay``^(r−1); ``momentum`` is SGD's (the optimizer,
    and so its momentum buffer or AdamW's moments, is fresh every phase).
    """

    optimizer: str
    lr: float
    head_lr: float
    b_lr_ratio: float
    smoothing: float
    smoothing_mode: str = REPLACE
    lr_decay: float = 1.0
    momentum: float = 0.0


def dp_settings(config: RunConfig, noise_multiplier: float | None = None) -> DPSettings:
    """The DP-SGD settings of ``config`` (σ = ``noise_multiplier`` when given: the audit's mechanism)."""
    sigma = config.noise_multiplier if noise_multiplier is None else noise_multiplier
    return DPSettings(config.batch_size, sigma, config.max_grad_norm)


def optim_settings(config: RunConfig) -> OptimSettings:
    """The local optimiser settings of ``config``."""
    return OptimSettings(
        config.optimizer, config.lr, config.head_lr, config.b_lr_ratio, config.smoothing,
        smoothing_mode=config.smoothing_mode, lr_decay=config.lr_decay, momentum=config.momentum,
    )


def poisson_batches(dataset: TensorDataset, sample_rate: float, rng: SecretRandom) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless Poisson-sampled batches: each record in each batch independently w.p. q.

    The sampling of Poisson-subsampled DP-SGD (Abadi et al. 2016; the amplification
    analysis of Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled
    Gaussian Mechanism", Sec. 3) — the distribution of Opacus's ``DPDataLoader`` — with the
    per-record coins from ``rng``. A batch may be empty (its tensors then have 0 rows).
    """
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    tensors = dataset.tensors
    n = len(dataset)
    while True:
        members = torch.nonzero(rng.bernoulli_mask(n, sample_rate)).reshape(-1)
        yield tuple(t.index_select(0, members) for t in tensors)


@dataclass
class ClientShard:
    """One (virtual) client's records and its Poisson sampler (q = B / n_i).

    ``prepare`` (optional) turns a sampled batch's stored inputs into model inputs (e.g.
    resizes small stored images to the model's size), so a shard need not hold every
    record at model resolution.
    """

    client_id: int
    dataset: TensorDataset
    sample_rate: float
    _batches: Iterator[Sequence[torch.Tensor]] | None = None
    prepare: Prepare | None = None

    @classmethod
    def build(
        cls, client_id: int, inputs: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int, prepare: Prepare | None = None,
    ) -> "ClientShard":
        if len(labels) == 0:
            raise ValueError(f"client {client_id} has no training records")
        return cls(client_id, TensorDataset(*inputs, labels), min(1.0, batch_size / len(labels)), prepare=prepare)

    def model_inputs(self, inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """A sampled batch's stored inputs as the model takes them."""
        return inputs if self.prepare is None else self.prepare(inputs)

    @property
    def num_records(self) -> int:
        return len(self.dataset)

    @property
    def batches(self) -> Iterator[Sequence[torch.Tensor]]:
        """Endless Poisson batches from a fresh OS-keyed :class:`SecretRandom`, made on first use."""
        if self._batches is None:
            self._batches = poisson_batches(self.dataset, self.sample_rate, secret_random())
        return self._batches

    @batches.setter
    def batches(self, value: Iterator[Sequence[torch.Tensor]]) -> None:
        self._batches = value


class LocalTrainer:
    """Local DP training of LoRA factors and head, for every client this process hosts.

    One model and one Opacus ``GradSampleModule`` per process, whatever the number of
    virtual clients: a client is its :class:`ClientShard` (records and sampler); the
    adapter it trains is loaded from the global state at the start of each phase, so no
    per-client copy of the model is ever held.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        factors: Mapping[str, Mapping[str, torch.nn.Parameter]],
        method: Method,
        dp: DPSettings,
        optim: OptimSettings,
        device: torch.device,
    ) -> None:
        self.method = method
        self.dp = dp
        self.optim = optim
        self.device = device
        self.factors = factors
        # Fix the trainable set *before* Opacus wraps the model; it never changes after.
        self.factor_of: dict[torch.nn.Parameter, str] = {}
        self.params: dict[str, torch.nn.Parameter] = {}
        for factor, named in factors.items():
            for name, p in named.items():
                p.requires_grad_(factor in method.trainable)
                if factor in method.trainable:
                    self.factor_of[p] = factor
                    self.params[name] = p
        self.model = GradSampleModule(model.to(device), loss_reduction="mean")
        self.noise_random = secret_random()  # DP-SGD noise (drawn on the CPU, copied to ``device``)

    def _optimizer(self, expected_batch_size: int, round_idx: int = 1) -> FactorwiseDPOptimizer:
        """The phase's optimizer: every rate decayed to round ``round_idx``, fresh state."""
        lr = round_learning_rate(self.optim.lr, self.optim.lr_decay, round_idx)
        head_lr = round_learning_rate(self.optim.head_lr, self.optim.lr_decay, round_idx)
        rates = factor_learning_rates(self.method, lr, head_lr, self.optim.b_lr_ratio)
        groups = [
            {"params": [p for p, f in self.factor_of.items() if f == factor], "lr": rates[factor]}
            for factor in sorted(set(self.factor_of.values()))
        ]
        if self.optim.optimizer == "adamw":
            base: torch.optim.Optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        else:
            base = torch.optim.SGD(groups, momentum=self.optim.momentum)
        return FactorwiseDPOptimizer(
            base,
            factor_of=self.factor_of,
            noise_multiplier=self.dp.noise_multiplier,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=expected_batch_size,
            rng=self.noise_random,
            smoothing=self.optim.smoothing if self.method.smoothing else 0.0,
            smoothing_mode=self.optim.smoothing_mode,
            reference_lr=lr,  # the published code's plain smoothed step uses the round's base lr
        )

    def load_global(self, vector: torch.Tensor, names: Sequence[str]) -> None:
        """Overwrite the named parameters with the server's global values."""
        assign_flat(self.params, names, vector)

    def train_phase(
        self,
        shard: ClientShard,
        global_vector: torch.Tensor,
        phase: Phase,
        local_steps: int,
        after_step: Callable[[int, frozenset[str]], None] | None = None,
        before_step: Callable[[int, list[torch.nn.Parameter]], None] | None = None,
        round_idx: int = 1,
    ) -> tuple[torch.Tensor, RoundReport]:
        """Run ``local_steps`` DP-SGD steps of ``shard`` from the global state; return update and report.

        ``round_idx`` (1-based) sets the learning rates (``OptimSettings.lr_decay``).

        ``global_vector`` holds every trainable parameter (``Method.all_sent_names``); the
        update (local − global) covers only what ``phase`` sends. It is the only thing
        derived from data that leaves the client, and it leaves only through secure
        aggregation. ``after_step(step, active_factors)`` is called after every step.

        ``before_step(step, params)`` is called after the backward pass and before
        ``optimizer.step()``: ``params`` are the optimizer's active parameters in a fixed
        order, each holding its per-sample gradients in ``p.grad_sample`` (shape
        ``(batch, *p.shape)``; ``batch`` may be 0 for an empty Poisson sample). The hook may
        append rows to ``p.grad_sample`` (e.g. the audit's gradient canaries, the same number
        of rows to every parameter); they then go through the same per-sample clipping and
        noise as real records.
        """
        self.load_global(global_vector, self.method.all_sent_names(self.factors))
        sent = phase.sent_names(self.factors)
        start = flatten(self.params, sent)
        self.model.train()
        optimizer = self._optimizer(max(1, round(shard.sample_rate * shard.num_records)), round_idx)
        for step in range(local_steps):
            optimizer.set_active(phase.active_at(step))
            optimizer.zero_grad()
            *inputs, labels = next(shard.batches)
            if len(labels) == 0:
                # An empty Poisson sample is still a step of the mechanism: noise only.
                for p in optimizer.params:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            else:
                logits = self.model(*shard.model_inputs([x.to(self.device) for x in inputs]))
                with warnings.catch_warnings():
                    # Opacus's hooks on the first LoRA layer fire with no input needing a
                    # gradient (the frozen embeddings); torch warns, the gradients are right.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    F.cross_entropy(logits, labels.to(self.device)).backward()
            if before_step is not None:
                before_step(step, list(optimizer.params))
            optimizer.step()
            if after_step is not None:
                after_step(step, phase.active_at(step))
        optimizer.zero_grad()
        update = flatten(self.params, sent) - start
        report = RoundReport(shard.client_id, local_steps, shard.sample_rate, self.dp.noise_multiplier)
        logger.debug("client %d ran %d steps at q=%.4f", shard.client_id, local_steps, shard.sample_rate)
        return update, report

