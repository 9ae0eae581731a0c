"""Benchmark: the Skellam codec (fedsim.dp.skellam) beside the old continuous-share path.

Both sides in one run, interleaved, best of repeats (robust to other load), at
d = 1e5 and 1e6, one client's encode and the server's decode of one sum:

  skellam:  SkellamCodec.encode (clip, scale, pad, randomized Hadamard rotation,
            conditional rounding, Sk(μ/m) noise, mod 2^32) and decode_sum (centre,
            rotate back, / γ), coins and noise from a ChaCha20 numpy Generator;
  old:      clip to S, add N(0, (zS)²/m) float noise (numpy, same generator), then
            secagg.encoding.FixedPointCodec(clip_range=1, num_parties=m, 32 bits,
            guard_bits=8).encode, and its decode_sum (reimplemented here only: the
            library path is gone).

Then, at the default setting (S = 1, z = 1, m = 4, d = 1e5, 32-bit ring): γ, the
rounding inflation Δ2/(γS), the wrap bound, and the fraction of coordinates the old path
clipped to ±clip_range (which made its noise non-Gaussian: issue 11, item 1).

    .venv/bin/python benchmarks/bench_skellam.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from fedsim.dp.randomness import SecretRandom
from fedsim.dp.skellam import SkellamCodec, rotation_seed, skellam_params
from secagg.encoding import FixedPointCodec

CLIP, Z, COHORT, BITS, GUARD_BITS = 1.0, 1.0, 4, 32, 8


def _chacha() -> np.random.Generator:
    return SecretRandom().numpy


def _old_encode(codec: FixedPointCodec, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The removed path's encoding: FixedPointCodec with a fresh 32-byte rounding-coin key."""
    return codec.encode(x, os.urandom(32))


def _old_share(update: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """The removed client_level path: clip to S, add this client's N(0, (zS)²/m) share."""
    norm = float(np.linalg.norm(update))
    clipped = update * min(1.0, CLIP / norm) if norm > 0 else update
    share = clipped + rng.normal(0.0, Z * CLIP / math.sqrt(COHORT), update.shape)
    return torch.from_numpy(share.astype(np.float32))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _measure(dim: int, repeats: int) -> dict[str, float]:
    rng = _chacha()
    update = rng.standard_normal(dim) * (0.5 / math.sqrt(dim))  # norm ~0.5: no clipping
    tensor = torch.from_numpy(update.astype(np.float32))
    codec = SkellamCodec(skellam_params(dim, CLIP, Z, COHORT, BITS))
    seed = rotation_seed(os.urandom(16), 1)
    old = FixedPointCodec(clip_range=1.0, num_parties=COHORT, modulus_bits=BITS, guard_bits=GUARD_BITS)
    ring = codec.encode(tensor, seed, rng)
    old_ring = _old_encode(old, _old_share(update, rng), rng)
    return {
        "skellam encode": _best(lambda: codec.encode(tensor, seed, rng), repeats),
        "old encode": _best(lambda: _old_encode(old, _old_share(update, rng), rng), repeats),
        "skellam decode": _best(lambda: codec.decode_sum(ring, COHORT, seed), repeats),
        "old decode": _best(lambda: old.decode_sum(old_ring), repeats),
    }


def _old_clipped_fraction(dim: int) -> float:
    """Fraction of coordinates of clip(update) + share outside ±clip_range at the old defaults."""
    rng = _chacha()
    update = rng.standard_normal(dim)
    share = _old_share(update, rng).numpy()
    return float(np.mean(np.abs(share) > 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"S={CLIP} z={Z} m={COHORT} ring Z_2^{BITS}; one client's encode, the server's decode; best of {args.repeats}")
    print(f"{'d':>9} {'skellam enc s':>14} {'old enc s':>10} {'ratio':>6} {'skellam dec s':>14} {'old dec s':>10} {'ratio':>6}")
    for dim in (100_000, 1_000_000):
        t = _measure(dim, args.repeats)
        enc, dec = t["skellam encode"] / t["old encode"], t["skellam decode"] / t["old decode"]
        print(
            f"{dim:>9} {t['skellam encode']:>14.4f} {t['old encode']:>10.4f} {enc:>6.2f}"
            f" {t['skellam decode']:>14.4f} {t['old decode']:>10.4f} {dec:>6.2f}"
        )
    p = skellam_params(100_000, CLIP, Z, COHORT, BITS)
    print(f"\ndefault setting (d = 1e5, padded {p.padded_dim}):")
    print(f"  gamma = {p.gamma:.6g}   mu = {p.mu:.6g} (each client adds Sk(mu/{p.planned}))")
    print(f"  rounding inflation Delta2/(gamma S) = {p.rounding_inflation:.9f}   Delta2 = {p.l2_sensitivity:.6g}, Delta1 = {p.l1_sensitivity:.6g}")
    print(
        f"  honest bound B(m) = {p.honest_bound(p.max_parties):.6g} <= 2^{BITS - 1 - p.guard_bits}"
        f" (guard bits {p.guard_bits}); P(|coordinate| > B) <= {p.wrap_probability:g};"
        f" P(wrap) <= 10^{p.log10_wrap_bound():.4g}"
    )
    print(f"old path at the defaults: {100 * _old_clipped_fraction(100_000):.2f}% of coordinates clipped to ±1")


if __name__ == "__main__":
    main()
