"""DP-SGD step vs plain step, per sample, on the default model (MiniLM + LoRA, bundled data).

Both steps run the same peft model on the same batch, interleaved so machine noise hits
both alike; the script prints median seconds per sample and the ratio (target ≤ 1.15×).
The DP step draws its noise as in a run: from the ChaCha20 CSPRNG
(:class:`fedsim.dp.randomness.SecretRandom`, float64 normals rounded to float32), on the
CPU, copied to the device; the script also times that draw alone (for every trainable
value, an upper bound on one step's: a step noises only its active factors).

    python benchmarks/bench_dp_step.py [--batch-size 32] [--repeats 15]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from fedsim.methods.registry import get_method
from fedsim.config import RunConfig
from fedsim.data.loaders import load_dataset
from fedsim.dp.optimizer import FactorwiseDPOptimizer
from fedsim.dp.randomness import secret_random
from fedsim.task import Task, model_inputs, model_spec
from fedsim.launch import configure_process_logging
from fedsim.models.build import build_model, factor_parameters

TARGET = 1.15


def trainable(model: torch.nn.Module, method_name: str) -> dict[torch.nn.Parameter, str]:
    method = get_method(method_name)
    factor_of = {}
    for factor, named in factor_parameters(model).items():
        for p in named.values():
            p.requires_grad_(factor in method.trainable)
            if factor in method.trainable:
                factor_of[p] = factor
    return factor_of


def plain_step(model, optimizer, inputs, labels) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(*inputs), labels).backward()
    optimizer.step()


def dp_step(model, optimizer, inputs, labels, active) -> None:
    optimizer.set_active(active)
    optimizer.zero_grad()
    F.cross_entropy(model(*inputs), labels).backward()
    optimizer.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--method", default="la-lora", choices=["la-lora", "dp-lora", "ffa-lora"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    configure_process_logging(logging.WARNING)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    config = RunConfig()
    data = load_dataset(config.dataset, seed=0, limit=config.limit)
    task = Task(model_spec(config, len(data.train.classes)), data)
    inputs = model_inputs(task, data.train)
    batch = tuple(x[: args.batch_size] for x in inputs)
    labels = data.train.labels[: args.batch_size]
    method = get_method(args.method)

    torch.manual_seed(0)
    plain_model = build_model(task.spec).train()
    plain_params = list(trainable(plain_model, args.method))
    plain_opt = torch.optim.AdamW(plain_params, lr=1e-3)

    torch.manual_seed(0)
    dp_base = build_model(task.spec).train()
    factor_of = trainable(dp_base, args.method)
    dp_model = GradSampleModule(dp_base, loss_reduction="mean")
    dp_opt = FactorwiseDPOptimizer(
        torch.optim.AdamW(list(factor_of), lr=1e-3),
        factor_of=factor_of,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=args.batch_size,
        rng=secret_random(),
        smoothing=1.0 if method.smoothing else 0.0,
    )

    for step in range(2):  # warm-up
        plain_step(plain_model, plain_opt, batch, labels)
        dp_step(dp_model, dp_opt, batch, labels, method.phases(1)[0].active_at(step))
    plain_times, dp_times = [], []
    for step in range(args.repeats):
        plain_times.append(timed(lambda: plain_step(plain_model, plain_opt, batch, labels)))
        dp_times.append(timed(lambda: dp_step(dp_model, dp_opt, batch, labels, method.phases(1)[0].active_at(step))))
    noised = sum(p.numel() for p in factor_of)
    rng = secret_random()
    draw = statistics.median(timed(lambda: rng.normal(noised)) for _ in range(args.repeats))
    plain = statistics.median(plain_times) / args.batch_size
    dp = statistics.median(dp_times) / args.batch_size
    ratio = dp / plain
    print(f"model: {config.model} + LoRA r={config.lora_rank}, method {args.method}, batch {args.batch_size}, "
          f"max_length {config.max_length}, 1 thread, {args.repeats} interleaved repeats")
    print(f"{'step':<24}{'ms / sample':>14}")
    print(f"{'plain (no DP)':<24}{plain * 1e3:>14.3f}")
    print(f"{'DP-SGD (Opacus)':<24}{dp * 1e3:>14.3f}")
    print(f"CSPRNG noise draw of all {noised} trainable values: {draw * 1e3:.2f} ms "
          f"({draw / args.batch_size * 1e3:.3f} ms / sample)")
    print(f"ratio DP / plain: {ratio:.3f}x (target <= {TARGET}x): {'PASS' if ratio <= TARGET else 'MISS'}")


if __name__ == "__main__":
    main()
