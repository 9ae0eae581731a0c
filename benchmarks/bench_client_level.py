"""Benchmark: client-level DP through the Skellam mechanism vs the removed continuous shares.

Issue 11, first benchmark: on the bundled task (all-MiniLM-L6-v2 + LoRA on WordNet
supersenses) with a population of virtual clients and fixed cohorts, at the same client
clip S and noise multiplier z, hence the same client-level ε:

  (a) skellam:     each cohort member encodes its update with fedsim's
                   :class:`~fedsim.dp.skellam.SkellamCodec` (clip to S, scale, rotate,
                   conditional rounding, + Sk(μ/m), mod 2^32); the ring sum (numpy uint
                   arithmetic mod 2^32: the pairwise masks cancel, so this is the server's
                   result) is decoded and divided by the cohort;
  (b) continuous:  the removed path, reimplemented here only: each member clips its update
                   to S, adds N(0, (zS)²/m) float noise, and
                   ``FixedPointCodec(clip_range=1, num_parties=m, 32 bits, guard_bits=8)``
                   encodes it (clipping every coordinate to ±1, stochastic rounding);
                   the server decodes the ring sum.

Design: two federations in lockstep, one per aggregation, from the same seed (data split,
partition, initial model) and with the same cohort each round (drawn once per round with
fedsim's :class:`~fedsim.population.CohortSampling`, a fresh ChaCha20 CSPRNG): each variant
trains the cohort from its own global state with the real
:meth:`~fedsim.client.trainer.LocalTrainer.train_phase` (DP-SGD at the sample-level σ).
Reusing one set of updates for both would not do: after round 1 the two global models
differ, and updates computed at one of them are not what a federation at the other would
send. The aggregation itself is isolated on identical inputs instead: every round, each
variant's updates go through *both* aggregations, and the error of each against the exact
mean of the clipped updates is measured (‖error‖ over the noise the accountant assumes,
(zS/m)·√d: 1 is exactly the claimed Gaussian/Skellam noise), with the fraction of
coordinates the old path clipped. The DP-SGD noise, Poisson sampling and cohorts come from
OS-keyed CSPRNGs and cannot be seeded (by design), so the seeds fix the data and the model,
not the noise: accuracy is mean ± std over seeds.

Accounting: (a) the ledger records one :class:`accounting.DistributedSkellam` per secure sum
(as the server writes them, :func:`fedsim.server.records.client_level_record`);
:func:`accounting.budget_snapshot` gives each client's ε against the server (the worst client
is reported) and against observers of the released models (= the server figure for fixed
cohorts). (b) what the old accountant claimed (:class:`accounting.ClientLevelGaussian`,
fixed-size: z/2 at q = 1 over every round) and the Gaussian figure for the same adversary as
(a) (z at q = 1 over the rounds the worst client took part in), valid only had the noise
been Gaussian, which the per-coordinate clipping breaks.

Codec cost: the encode/decode time per member/sum at the task's d measured inside the
runs, and :mod:`bench_skellam`'s figures at d = 1e5 and 1e6 printed beside them.

    .venv/bin/python benchmarks/bench_client_level.py [--rounds 3] [--seeds 3] [--population 16]
        [--cohort 4] [--method la-lora] [--local-steps 3] [--limit 1200] [--reference]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from accounting import (
    AGAINST_OBSERVERS,
    AGAINST_SERVER,
    ClientLevelGaussian,
    LedgerRecord,
    PoissonSubsampledGaussian,
    budget_snapshot,
    prv_epsilon,
    rdp_epsilon,
)
from fedsim.audit.driver import add_mean, build_federation
from fedsim.config import RunConfig, build_config
from fedsim.dp.randomness import SecretRandom, session_id
from fedsim.dp.skellam import (
    SkellamCodec,
    SkellamParams,
    clip_to_norm,
    rotation_seed,
    skellam_params,
)
from fedsim.launch import configure_process_logging
from fedsim.methods.registry import phase_steps
from fedsim.population import CohortSampling, cohort_sampling
from fedsim.secure_sum.exchange import exchange_index
from fedsim.server.evaluation import evaluate
from fedsim.server.records import client_level_record
from fedsim.task import load_task, model_inputs
from fedsim.transport.vectors import flatten
from secagg.encoding import FixedPointCodec, as_ring_array, ring_dtype

SKELLAM, CONTINUOUS, REFERENCE = "skellam", "continuous", "reference"
MODULUS_BITS, GUARD_BITS, OLD_CLIP_RANGE = 32, 8, 1.0  # the removed path's ring and codec


# --- the two aggregations of one cohort's updates ------------------------------------------


@dataclass
class AggregationStats:
    """What one aggregation did over a run: error ratios, clipped coordinates, codec time."""

    error_ratios: list[float] = field(default_factory=list)
    clipped: int = 0
    coordinates: int = 0
    out_of_range: int = 0
    encode_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)

    def add(self, other: AggregationStats) -> None:
        self.error_ratios += other.error_ratios
        self.clipped += other.clipped
        self.coordinates += other.coordinates
        self.out_of_range += other.out_of_range
        self.encode_s += other.encode_s
        self.decode_s += other.decode_s


def ring_sum(rings: Sequence[np.ndarray], modulus_bits: int) -> np.ndarray:
    """Σ rings mod 2^b in numpy unsigned arithmetic (wraps): what secure aggregation reveals."""
    total = np.zeros(rings[0].shape, dtype=ring_dtype(modulus_bits))
    for ring in rings:
        np.add(total, ring, out=total)
    return total


def skellam_mean(
    updates: Sequence[torch.Tensor], params: SkellamParams, seed: bytes, rng: SecretRandom, stats: AggregationStats
) -> torch.Tensor:
    """(a) The cohort's mean through the Skellam codec (AKL21, Alg. 1): encode, ring-sum, decode, / m."""
    codec = SkellamCodec(params)
    rings = []
    for update in updates:
        started = time.perf_counter()
        rings.append(codec.encode(update, seed, rng.numpy))
        stats.encode_s.append(time.perf_counter() - started)
    total = ring_sum(rings, params.modulus_bits)
    stats.out_of_range += codec.out_of_range(total, len(updates))
    started = time.perf_counter()
    decoded = codec.decode_sum(total, len(updates), seed)
    stats.decode_s.append(time.perf_counter() - started)
    return decoded / len(updates)


def continuous_mean(
    updates: Sequence[torch.Tensor], clip: float, noise_multiplier: float, rng: SecretRandom, stats: AggregationStats
) -> torch.Tensor:
    """(b) The removed path: clip to S, + N(0, (zS)²/m), FixedPointCodec (±1 per coordinate), ring-sum, decode, / m."""
    m = len(updates)
    codec = FixedPointCodec(clip_range=OLD_CLIP_RANGE, num_parties=m, modulus_bits=MODULUS_BITS, guard_bits=GUARD_BITS)
    rings = []
    for update in updates:
        started = time.perf_counter()
        clipped = torch.from_numpy(clip_to_norm(update.detach().cpu().double().numpy(), clip).astype(np.float32))
        share = clipped + rng.normal(clipped.shape, std=noise_multiplier * clip / math.sqrt(m))
        rings.append(as_ring_array(codec.encode(share, os.urandom(32))))
        stats.encode_s.append(time.perf_counter() - started)
        stats.clipped += int(torch.count_nonzero(share.abs() > OLD_CLIP_RANGE))
        stats.coordinates += share.numel()
    total = ring_sum(rings, MODULUS_BITS)
    started = time.perf_counter()
    decoded = codec.decode_sum(total)
    stats.decode_s.append(time.perf_counter() - started)
    return decoded / m


def clipped_mean(updates: Sequence[torch.Tensor], clip: float) -> torch.Tensor:
    """The exact mean of the updates clipped to L2 norm S: what both aggregations estimate."""
    clipped = [clip_to_norm(u.detach().cpu().double().numpy(), clip) for u in updates]
    return torch.from_numpy(np.mean(clipped, axis=0).astype(np.float32))


def error_ratio(estimate: torch.Tensor, exact: torch.Tensor, clip: float, noise_multiplier: float, cohort: int) -> float:
    """‖estimate − exact‖ / ((zS/m)·√d): 1 when the mean carries exactly the claimed N(0, (zS/m)²) per coordinate."""
    expected = noise_multiplier * clip / cohort * math.sqrt(exact.numel())
    return float(torch.linalg.vector_norm((estimate - exact).double())) / expected


# --- one federation per aggregation, in lockstep -------------------------------------------


@dataclass
class SeedResult:
    """One seed's run: final accuracies per variant, the ledger records of (a), the stats."""

    seed: int
    initial_accuracy: float
    accuracy: dict[str, float]
    records: list[LedgerRecord]
    stats: dict[str, AggregationStats]
    dim: int
    padded_dim: int
    params: SkellamParams
    seconds: float


def run_seed(config: RunConfig, variants: Sequence[str], device: torch.device) -> SeedResult:
    """Train one federation per variant in lockstep (same seed, same cohorts); evaluate at the end."""
    started = time.perf_counter()
    task = load_task(config)
    population = config.population_size
    sampling: CohortSampling = cohort_sampling(config)
    cohort_size = sampling.expected_size(population)
    federation = build_federation(config, task, noise_multiplier=config.noise_multiplier, cohort=population, device=device)
    trainer, shards = federation.trainer, list(federation.shards)
    names = trainer.method.all_sent_names(trainer.factors)
    sizes = [trainer.params[n].numel() for n in names]
    starts = np.cumsum([0, *sizes])
    layout = {n: slice(int(starts[i]), int(starts[i + 1])) for i, n in enumerate(names)}
    test_inputs, test_labels = model_inputs(task, task.data.test), task.data.test.labels
    initial_accuracy, _ = evaluate(trainer.model, test_inputs, test_labels, device=device)

    z, clip = config.client_noise_multiplier, config.client_clip
    rng, session = SecretRandom(), session_id()
    state = {v: flatten(trainer.params, names).detach().clone() for v in variants}
    stats = {SKELLAM: AggregationStats(), CONTINUOUS: AggregationStats()}
    records: list[LedgerRecord] = []
    params = None
    for round_idx in range(1, config.rounds + 1):
        cohort = sampling.sample(population)
        phases = trainer.method.phases(round_idx)
        for phase_idx, (phase, steps) in enumerate(zip(phases, phase_steps(config.local_steps, len(phases)))):
            sent = phase.sent_names(trainer.factors)
            dim = sum(trainer.params[n].numel() for n in sent)
            params = skellam_params(dim, clip, z, cohort_size, MODULUS_BITS)
            seed = rotation_seed(session, exchange_index(round_idx, phase_idx, len(phases)))
            for variant in variants:
                updates = [trainer.train_phase(shards[c - 1], state[variant], phase, steps)[0].cpu() for c in cohort]
                exact = clipped_mean(updates, clip)
                means = {
                    SKELLAM: skellam_mean(updates, params, seed, rng, stats[SKELLAM]),
                    CONTINUOUS: continuous_mean(updates, clip, z, rng, stats[CONTINUOUS]),
                    REFERENCE: exact,
                }
                for name in (SKELLAM, CONTINUOUS):  # both aggregations on identical inputs
                    stats[name].error_ratios.append(error_ratio(means[name], exact, clip, z, len(cohort)))
                state[variant] = add_mean(state[variant], layout, sent, means[variant])
            records.append(
                client_level_record(
                    round_idx, params=params, sampling=sampling, population=population, survivors=cohort, delta=config.delta
                )
            )
        logging.getLogger(__name__).info("seed %d round %d/%d done", config.seed, round_idx, config.rounds)
    accuracy = {}
    for variant in variants:
        trainer.load_global(state[variant], names)
        accuracy[variant], _ = evaluate(trainer.model, test_inputs, test_labels, device=device)
    return SeedResult(
        config.seed, initial_accuracy, accuracy, records, stats, params.dim, params.padded_dim, params,
        time.perf_counter() - started,
    )  # fmt: skip


# --- accounting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Epsilons:
    """Client-level ε at δ: (a) per adversary for the worst client; (b) the old claims."""

    server: float
    observers: float
    worst_rounds: int
    old_claimed: float
    gaussian_same_adversary: float
    gaussian_same_adversary_rdp: float


def epsilons(records: Sequence[LedgerRecord], config: RunConfig) -> Epsilons:
    """The accountant's figures for (a) from its ledger records, and (b)'s Gaussian figures."""
    snapshot = budget_snapshot(records, config.delta)
    server = snapshot.worst_client_level(AGAINST_SERVER)
    observers = snapshot.worst_client_level(AGAINST_OBSERVERS)
    z, population = config.client_noise_multiplier, config.population_size
    cohort = cohort_sampling(config).expected_size(population)
    old = ClientLevelGaussian(z, cohort, population, config.rounds, sampling="fixed_size")
    old_ledger = [LedgerRecord(round=1, client=None, mechanism=old, delta=config.delta)]
    old_claimed = budget_snapshot(old_ledger, config.delta).population.prv.upper
    same = [PoissonSubsampledGaussian(z, 1.0, server.sums)]
    return Epsilons(
        server=server.epsilon,
        observers=observers.epsilon,
        worst_rounds=server.rounds,
        old_claimed=old_claimed,
        gaussian_same_adversary=prv_epsilon(same, config.delta).upper,
        gaussian_same_adversary_rdp=rdp_epsilon(same, config.delta),
    )


# --- codec cost at d = 1e5, 1e6 (helper K's benchmark) -------------------------------------


def skellam_bench_figures(repeats: int) -> dict[int, dict[str, float]]:
    """bench_skellam's encode/decode timings (best of ``repeats``) at d = 1e5 and 1e6."""
    path = Path(__file__).with_name("bench_skellam.py")
    spec = importlib.util.spec_from_file_location("bench_skellam", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {dim: module._measure(dim, repeats) for dim in (100_000, 1_000_000)}


# --- report ---------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report(
    config: RunConfig, results: Sequence[SeedResult], variants: Sequence[str], codec: Mapping[int, Mapping[str, float]] | None
) -> None:
    """Print the side-by-side table of (a) and (b), the accountant's figures and the codec costs."""
    first = results[0]
    p = first.params
    sk, old = AggregationStats(), AggregationStats()
    for r in results:
        sk.add(r.stats[SKELLAM])
        old.add(r.stats[CONTINUOUS])
    eps = [epsilons(r.records, config) for r in results]
    worst = max(eps, key=lambda e: e.server)
    print(
        f"\nclient-level DP on {config.dataset} ({config.model} + LoRA r={config.lora_rank}), {config.methods[0]}; "
        f"population {config.population_size}, fixed cohorts of {config.cohort_size} (CohortSampling, ChaCha20)\n"
        f"z = {config.client_noise_multiplier:g}, S = client clip = {config.client_clip:g}; sample-level σ = "
        f"{config.noise_multiplier:g}, C = {config.max_grad_norm:g}, B = {config.batch_size}; {config.rounds} rounds × "
        f"{config.local_steps} local steps; limit {config.limit}; seeds {[r.seed for r in results]}; "
        f"d = {first.dim} (padded {first.padded_dim}); δ = {config.delta:g}"
    )
    print(
        f"Skellam: γ = {p.gamma:.6g}, μ = {p.mu:.6g} (Sk(μ/{p.planned}) per member), Δ2/(γS) = "
        f"{p.rounding_inflation:.6f}, P(|coord| > honest bound) <= {p.wrap_probability:g}, P(wrap) <= "
        f"10^{p.log10_wrap_bound():.4g}"
    )
    rows = [
        ("", "(a) skellam", "(b) continuous (removed)"),
        ("test accuracy, mean ± std", mean_std([r.accuracy[SKELLAM] for r in results]),
         mean_std([r.accuracy[CONTINUOUS] for r in results])),
        ("  per seed", " ".join(f"{r.accuracy[SKELLAM]:.4f}" for r in results),
         " ".join(f"{r.accuracy[CONTINUOUS]:.4f}" for r in results)),
        ("‖mean − clipped mean‖ / ((zS/m)√d)", mean_std(sk.error_ratios), mean_std(old.error_ratios)),
        ("coordinates clipped", "0 (no clipping in the ring)",
         f"{100 * old.clipped / max(1, old.coordinates):.3f}% of {old.coordinates}"),
        ("sums out of honest range", f"{sk.out_of_range} coordinates", "-"),
        (f"encode ms/member (d={first.dim})", f"{1e3 * statistics.median(sk.encode_s):.1f}",
         f"{1e3 * statistics.median(old.encode_s):.1f}"),
        (f"decode ms/sum (d={first.dim})", f"{1e3 * statistics.median(sk.decode_s):.1f}",
         f"{1e3 * statistics.median(old.decode_s):.1f}"),
        (f"client-level ε, δ={config.delta:g}",
         f"{worst.server:.4f} vs server ({worst.worst_rounds} rounds); {worst.observers:.4f} vs observers",
         f"claimed {worst.old_claimed:.4f} (fixed-size: z/2, q=1, {config.rounds} rounds)"),
        ("  same adversary as (a), if Gaussian", "-",
         (f"{worst.gaussian_same_adversary:.4f} PRV, {worst.gaussian_same_adversary_rdp:.4f} RDP "
          f"(z, q=1, {worst.worst_rounds} rounds)")),
    ]  # fmt: skip
    if codec:
        for dim, t in codec.items():
            rows.append((f"encode ms/member (d={dim:.0e}, bench_skellam)", f"{1e3 * t['skellam encode']:.1f}",
                         f"{1e3 * t['old encode']:.1f}"))  # fmt: skip
            rows.append((f"decode ms/sum (d={dim:.0e}, bench_skellam)", f"{1e3 * t['skellam decode']:.1f}",
                         f"{1e3 * t['old decode']:.1f}"))  # fmt: skip
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip())
    print(f"initial accuracy (before round 1): {mean_std([r.initial_accuracy for r in results])}")
    if REFERENCE in variants:
        print(f"reference (clipped mean, no client-level noise): {mean_std([r.accuracy[REFERENCE] for r in results])}")
    print(
        "worst client's ε per seed, vs server: "
        + ", ".join(f"seed {r.seed}: {e.server:.4f} ({e.worst_rounds} rounds)" for r, e in zip(results, eps))
    )
    print(f"wall time per seed: {', '.join(f'{r.seconds:.0f} s' for r in results)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="runs with config seeds 0..N-1 (data split, partition, model)")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--cohort", type=int, default=4, help="fixed cohort size m")
    parser.add_argument("--method", default="la-lora")
    parser.add_argument("--local-steps", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1200, help="training records of the bundled task")
    parser.add_argument("--client-noise-multiplier", type=float, default=1.0, help="z (> 0)")
    parser.add_argument("--client-clip", type=float, default=1.0, help="S")
    parser.add_argument("--reference", action="store_true", help="also train a federation on the noiseless clipped mean")
    parser.add_argument("--repeats", type=int, default=3, help="bench_skellam repeats at d = 1e5, 1e6 (0: skip)")
    args = parser.parse_args()
    if not args.client_noise_multiplier > 0:
        parser.error(f"--client-noise-multiplier={args.client_noise_multiplier} is invalid: expected a number > 0")
    configure_process_logging(logging.WARNING, None)
    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = [SKELLAM, CONTINUOUS] + ([REFERENCE] if args.reference else [])
    results = []
    for seed in range(args.seeds):
        config = build_config(
            methods=args.method, population=args.population, num_clients=min(4, args.population), cohort="fixed",
            cohort_size=args.cohort, client_noise_multiplier=args.client_noise_multiplier, client_clip=args.client_clip,
            rounds=args.rounds, local_steps=args.local_steps, limit=args.limit, seed=seed,
            secagg_modulus_bits=MODULUS_BITS,
        )  # fmt: skip
        results.append(run_seed(config, variants, device))
        print(f"seed {seed}: " + ", ".join(f"{v} {a:.4f}" for v, a in results[-1].accuracy.items())
              + f" ({results[-1].seconds:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    codec = skellam_bench_figures(args.repeats) if args.repeats > 0 else None
    report(config, results, variants, codec)


if __name__ == "__main__":
    main()
