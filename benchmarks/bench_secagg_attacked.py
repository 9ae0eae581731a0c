"""Benchmark: per-client and server cost of SecAgg+ rounds with 10% real dropouts and one malicious client.

n = 100 and 1000 clients in this one process (virtual clients, ``bench_secagg_scaling``'s
timers), the SecAgg+ graph sized for the declared real-dropout bound (10%) and no
collusion, both threat models. Per setting, side by side in one run:

  clean     no dropouts, no attacker;
  attacked  10% of the cohort stop answering after ShareKeys (real deaths: their masks
            are rebuilt from shares) and one client sends garbage share ciphertexts to
            every neighbour (each honest receiver accuses it; the server names it and
            excludes it, Bonawitz et al. 2017 Fig. 4 with fedsim's accusations).

Every attacked round is checked: it completed, the sum is exactly the honest survivors'
sum, the attacker is named, and no honest client is. Prints the mean honest client's
seconds, the server's seconds and the attacked / clean ratios.

    .venv/bin/python benchmarks/bench_secagg_attacked.py [--sizes 100 1000] [--dim 1000]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics

import numpy as np
from bench_secagg_scaling import _TimedClient as TimedClient

from fedsim.secure_sum.config import SecureSumConfig
from fedsim.secure_sum.identity import local_pki
from secagg.graph import graph_for
from secagg.protocol import ClientRound, ServerRound, drive
from secagg.stages import MASKED_INPUT_COLLECTION


class _GarbageSealer(ClientRound):
    """A malicious client: every share ciphertext it sends is random bytes of the right size."""

    def _seal(self, peer: int, send_key: bytes, b_share: bytes, sk_share: bytes) -> bytes:
        return os.urandom(len(super()._seal(peer, send_key, b_share, sk_share)))


def one_round(n: int, dim: int, threat_model: str, attacked: bool) -> tuple[float, float, tuple[int, int]]:
    """(mean honest client s, server s, (t, k)) of one checked round."""
    config = SecureSumConfig(graph="sparse", threat_model=threat_model, max_dropout=0.1)
    params = config.protocol_params(os.urandom(16), 1, tuple(range(1, n + 1)), dim)
    keys, pki = {}, None
    if params.active:
        local = local_pki(params.client_ids)
        keys, pki = dict(local.identities), dict(local.verify_keys)
    graph = graph_for(params)
    attacker = 1 if attacked else None
    dead = set(range(n // 10 + 1, 2 * (n // 10) + 1)) if attacked else set()  # 10%, not the attacker
    inputs = {u: np.full(dim, u % 97, np.uint32) for u in params.client_ids}
    clients = {}
    for u in params.client_ids:
        kind = _GarbageSealer if u == attacker else ClientRound
        client = kind(params, u, graph=graph, signing_key=keys.get(u), verify_keys=pki)
        client.set_input(inputs[u])
        clients[u] = TimedClient(client)
    server = drive(ServerRound(params, graph=graph, verify_keys=pki, keep_transcript=False), clients,
                   {MASKED_INPUT_COLLECTION: dead})
    assert not server.aborted, server.abort_reason
    honest = set(params.client_ids) - dead - {attacker}
    assert set(server.survivors) == honest, (len(server.survivors), len(honest))
    expected = np.zeros(dim, np.uint32)
    for u in honest:
        expected += inputs[u]
    assert np.array_equal(server.result, expected)
    named = {r[0] for r in server.rejections}
    assert named == ({attacker} if attacked else set()), server.rejections[:3]
    client_s = statistics.fmean(clients[u].seconds for u in honest)
    return client_s, sum(server.stage_seconds.values()), (params.threshold, params.neighbours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per setting; medians are shown")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(f"dim = {args.dim}; SecAgg+ sized for 10% real dropouts, no collusion; medians of {args.repeats}")
    print(f"{'n':>5} {'threat model':<12} {'t,k':>7} | {'client ms clean':>15} {'attacked':>9} {'ratio':>6} | "
          f"{'server s clean':>14} {'attacked':>9} {'ratio':>6}")
    for n in args.sizes:
        for model in ("semi-honest", "active"):
            clean = [one_round(n, args.dim, model, False) for _ in range(args.repeats)]
            hit = [one_round(n, args.dim, model, True) for _ in range(args.repeats)]
            c_client, c_server = (statistics.median(r[i] for r in clean) for i in range(2))
            a_client, a_server = (statistics.median(r[i] for r in hit) for i in range(2))
            t, k = clean[0][2]
            print(f"{n:>5} {model:<12} {f'{t},{k}':>7} | {1e3 * c_client:15.2f} {1e3 * a_client:9.2f} "
                  f"{a_client / c_client:5.2f}x | {c_server:14.3f} {a_server:9.3f} {a_server / c_server:5.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
