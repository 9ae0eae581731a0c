"""Benchmark: per-client cost vs cohort size, complete graph (SecAgg) vs SecAgg+ graph.

All n virtual clients and the server run in this one process, one after the other; each
``ClientRound.handle`` and ``ServerRound.start/step`` call is timed.  Per-client cost is
the mean over clients of their summed handle() time for the round.  A small dim (default
1000) keeps the vector work negligible, so what grows is the per-peer work: key
agreements (X25519 + HKDF), Shamir shares, AES-GCM, one keystream per neighbour.
Complete graph: every client does n - 1 of each (O(n)); SecAgg+: k = O(log n)
neighbours from ``choose_secagg_params(n, dropout, collusion, "sparse")``.
Prints, side by side, the per-client seconds, their growth from the smallest n, and
the fitted exponent of n (1 for O(n), ~0 for O(log n)).

    .venv/bin/python benchmarks/bench_secagg_scaling.py [--sizes 100 200 500 1000] [--dim 1000]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Mapping

import numpy as np

from secagg.graph import graph_for
from secagg.params import choose_secagg_params
from secagg.protocol import ClientRound, ProtocolParams, ServerRound, drive


class _TimedClient:
    """A ClientRound whose handle() calls are timed."""

    def __init__(self, client: ClientRound) -> None:
        self.client = client
        self.seconds = 0.0

    def handle(self, message: bytes) -> bytes:
        start = time.perf_counter()
        try:
            return self.client.handle(message)
        finally:
            self.seconds += time.perf_counter() - start


def timed_round(
    params: ProtocolParams, inputs: Mapping[int, np.ndarray], dropouts: Mapping[str, set[int]] | None = None
) -> tuple[ServerRound, dict[int, float], float]:
    """run_in_memory with timers: (server, seconds per client, server seconds)."""
    graph = graph_for(params)
    clients = {u: _TimedClient(ClientRound(params, u, graph=graph)) for u in params.client_ids}
    for u, timed in clients.items():
        timed.client.set_input(inputs[u])
    server = drive(ServerRound(params, graph=graph, keep_transcript=False), clients, dropouts)
    return server, {u: c.seconds for u, c in clients.items()}, sum(server.stage_seconds.values())


def _params(n: int, dim: int, graph: str, dropout: float, collusion: float) -> ProtocolParams:
    threshold, neighbours = choose_secagg_params(n, dropout, collusion, graph)
    return ProtocolParams(os.urandom(16), 1, tuple(range(1, n + 1)), dim, threshold, neighbours=neighbours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 500, 1000])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--dropout", type=float, default=0.1, help="planned dropout rate (parameter choice)")
    parser.add_argument(
        "--collusion", type=float, default=0.05, help="collusion bound, fraction of the cohort"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(
        f"dim = {args.dim}; parameters for dropout {args.dropout}, collusion {args.collusion}; "
        "no actual dropouts"
    )
    print(
        f"{'n':>6} | {'full: t':>8} {'s/client':>9} {'growth':>7} {'server s':>9} | "
        f"{'SecAgg+: k':>10} {'t':>4} {'s/client':>9} {'growth':>7} {'server s':>9} | {'full/SecAgg+':>12}"
    )
    rows = []
    for n in args.sizes:
        row = {"n": n}
        for graph in ("full", "sparse"):
            params = _params(n, args.dim, graph, args.dropout, args.collusion)
            inputs = {u: np.zeros(args.dim, np.uint32) for u in params.client_ids}
            server, per_client, server_s = timed_round(params, inputs)
            assert not server.aborted and np.array_equal(server.result, np.zeros(args.dim, np.uint32))
            row[graph] = (params.threshold, params.neighbours, sum(per_client.values()) / n, server_s)
        rows.append(row)
        base = rows[0]
        full, sparse = row["full"], row["sparse"]
        print(
            f"{n:>6} | {full[0]:>8} {full[2]:>9.4f} {full[2] / base['full'][2]:>6.1f}x {full[3]:>9.2f} | "
            f"{str(sparse[1]):>10} {sparse[0]:>4} {sparse[2]:>9.4f} {sparse[2] / base['sparse'][2]:>6.1f}x "
            f"{sparse[3]:>9.2f} | {full[2] / sparse[2]:>11.1f}x",
            flush=True,
        )
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        span = math.log(last["n"] / first["n"])
        for graph, label in (("full", "complete graph"), ("sparse", "SecAgg+")):
            slope = math.log(last[graph][2] / first[graph][2]) / span
            print(f"{label}: per-client cost ~ n^{slope:.2f} from n = {first['n']} to {last['n']}")


if __name__ == "__main__":
    main()
