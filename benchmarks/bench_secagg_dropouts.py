"""Benchmark: server cost of one round with 0%, 10% and 30% of the clients dropping out.

Clients drop after ShareKeys (they never send a masked input): the costliest case for the
server, which must reconstruct each dropped client's mask key from t shares and
regenerate its pairwise masks with every surviving neighbour, besides removing every
survivor's self mask.  Complete graph and SecAgg+ graph side by side, all clients in
this one process (``bench_secagg_scaling.timed_round``); server seconds are the sum of
``ServerRound.start/step``; the ratio is against the same graph with no dropouts.

    .venv/bin/python benchmarks/bench_secagg_dropouts.py [--clients 200] [--dim 100000]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics

import numpy as np
from bench_secagg_scaling import timed_round

from secagg.params import choose_secagg_params
from secagg.protocol import ProtocolParams
from secagg.stages import MASKED_INPUT_COLLECTION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per setting; medians are shown")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    n, dim = args.clients, args.dim
    print(f"n = {n} clients, dim = {dim}, uint32 ring; parameters planned for 30% dropout, 5% collusion")
    print(
        f"{'graph':>9} {'t':>4} {'k':>5} {'dropped':>8} {'server s':>9} {'vs 0%':>6} {'unmask s':>9} "
        f"{'client s (mean)':>15}"
    )
    for graph in ("full", "sparse"):
        threshold, neighbours = choose_secagg_params(n, max(args.rates), 0.05, graph)
        base = None
        for rate in args.rates:
            dropped = set(np.linspace(1, n, round(rate * n), dtype=int).tolist()) if rate else set()
            runs = [_one_round(n, dim, threshold, neighbours, dropped) for _ in range(args.repeats)]
            server_s, unmask_s, client_s = (statistics.median(r[i] for r in runs) for i in range(3))
            base = base or server_s
            print(
                f"{graph:>9} {threshold:>4} {str(neighbours):>5} {len(dropped):>8} {server_s:>9.2f} "
                f"{server_s / base:>5.1f}x {unmask_s:>9.2f} {client_s:>15.4f}",
                flush=True,
            )


def _one_round(
    n: int, dim: int, threshold: int, neighbours: int | None, dropped: set[int]
) -> tuple[float, ...]:
    """(server s, server Unmasking s, mean client s) of one checked round."""
    params = ProtocolParams(os.urandom(16), 1, tuple(range(1, n + 1)), dim, threshold, neighbours=neighbours)
    inputs = {u: np.full(dim, u, np.uint32) for u in params.client_ids}
    server, per_client, server_s = timed_round(params, inputs, {MASKED_INPUT_COLLECTION: dropped})
    assert not server.aborted, server.abort_reason
    assert server.survivors == tuple(sorted(set(params.client_ids) - dropped))
    expected = np.zeros(dim, np.uint32)
    for u in server.survivors:
        expected += inputs[u]
    assert np.array_equal(server.result, expected)
    return server_s, server.stage_seconds["Unmasking"], sum(per_client.values()) / n


if __name__ == "__main__":
    main()
