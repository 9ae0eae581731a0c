"""Benchmark: masking + accumulation throughput vs the raw AES-CTR keystream rate.

Target (issue 3): masking a vector with P keystreams and adding the masked vector into
the server's sum runs at >= 70% of the rate at which AES-256-CTR alone produces the same
keystream bytes.  Both sides are measured in one run, interleaved, best of repeats
(the minimum: robust to other load on a shared machine, where medians swing):

  raw:     P keystreams of d words, each written straight into a preallocated array
           (``Keystream.read_words``: the PRG with nothing else);
  masked:  ``secagg.masking.add_masks_`` of the same P (sign, key) streams into a copy
           of x (keystream chunk + wrap-around add/sub, cache-sized chunks), then the
           server's ``np.add(total, y, out=total)``.

    .venv/bin/python benchmarks/bench_secagg_masking.py [--dim 1000000] [--streams 16]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from secagg.masking import MASK_NONCE, add_masks_
from secagg.prg import Keystream

TARGET = 0.70


def _measure(dim: int, streams: int, dtype: type, repeats: int) -> tuple[float, float]:
    """Best seconds of (raw keystream, masking + accumulation) for ``streams`` keys."""
    keys = [(1 if i % 2 else -1, os.urandom(32)) for i in range(streams)]
    buffer = np.empty(dim, dtype=dtype)
    x = np.arange(dim, dtype=dtype)
    y = np.empty_like(x)
    total = np.zeros_like(x)
    raw, masked = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for _sign, key in keys:
            Keystream(key, MASK_NONCE).read_words(buffer)
        raw.append(time.perf_counter() - start)
        np.copyto(y, x)
        start = time.perf_counter()
        add_masks_(y, keys)
        np.add(total, y, out=total)
        masked.append(time.perf_counter() - start)
    return min(raw), min(masked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=16, help="keys per masked vector (peers + self mask)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"d = {args.dim} ring elements, {args.streams} keystreams per vector, best of {args.repeats}")
    print(f"{'ring':>8} {'raw AES-CTR GB/s':>17} {'mask+acc GB/s':>14} {'ratio':>7} {'target':>7}")
    for dtype, name in ((np.uint32, "Z_2^32"), (np.uint64, "Z_2^64")):
        _measure(min(args.dim, 65536), args.streams, dtype, 2)  # warm up
        raw, masked = _measure(args.dim, args.streams, dtype, args.repeats)
        nbytes = args.dim * np.dtype(dtype).itemsize * args.streams
        ratio = raw / masked
        verdict = "ok" if ratio >= TARGET else "MISSED"
        print(
            f"{name:>8} {nbytes / raw / 1e9:>17.2f} {nbytes / masked / 1e9:>14.2f} {ratio:>6.0%} "
            f"{'>= ' + format(TARGET, '.0%'):>7} {verdict}"
        )


if __name__ == "__main__":
    main()
