"""Benchmark: a secure-aggregation round vs a plain float32 all_reduce of the same updates.

Starts 1 server + ``--processes`` client processes on this machine (127.0.0.1, one
torch thread each); n clients are spread over the client processes (virtual clients when
n exceeds them). For every case it alternates ``--repeats`` times between

  (a) one full secure round as fedsim runs it (:mod:`fedsim.secure_sum.exchange` over the relay:
      START, AdvertiseKeys, ShareKeys, MaskedInputCollection, Unmasking, OUTCOME; fresh
      X25519 keys, Shamir shares, AES-GCM, encode, mask, relay, sum, unmask, decode), and
  (b) the plain baseline: each process adds the updates of the clients it hosts and one
      ``dist.all_reduce`` of float32 sums them over the same processes (the server adds
      zeros),

each timed from a barrier to the moment the last rank is done (max over ranks). Printed
side by side in one run: wall medians and their ratio against the issue's targets, the
same round with a null protocol that moves the same bytes through the same relay (what
the transport costs without the cryptography), the server's time per stage, CPU seconds
per client (the O(n) vs O(log n) comparison of the complete graph and the SecAgg+ graph),
and the server's cost when 10% or 30% of the clients drop before sending masked inputs.

    .venv/bin/python benchmarks/bench_secure_aggregation.py            # all cases
    .venv/bin/python benchmarks/bench_secure_aggregation.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SESSION = bytes.fromhex("be9c4ba5e1a2b3c4d5e6f708192a3b4c")


@dataclass(frozen=True)
class Case:
    """One measured setting. ``graph``: "full", or "sparse" with ``neighbours`` (None: the
    safe choice of :func:`secagg.params.choose_secagg_params` at ``dropout_rate``)."""

    name: str
    clients: int
    dim: int
    graph: str = "full"
    neighbours: int | None = None
    modulus_bits: int = 32
    dropout_rate: float = 0.0
    injected: float = 0.0  # share of clients made to drop at MaskedInputCollection
    target: float | None = None
    section: str = "ratio"
    threat_model: str = "semi-honest"


def cases(processes: int) -> list[Case]:
    """The issue's targets first, then per-client cost vs n for both graphs."""
    n = processes
    listed = []
    for model in ("semi-honest", "active"):
        tag = "" if model == "semi-honest" else " [active]"
        listed += [
            Case(f"d=1e5, complete graph{tag}", n, 100_000, target=1.3, threat_model=model),
            Case(f"d=1e6, SecAgg+ k=2, mod 2^32{tag}", n, 1_000_000, graph="sparse", neighbours=2, target=2.0,
                 threat_model=model),
            Case(f"d=1e6, complete graph, n={n}{tag}", n, 1_000_000, target=3.0, threat_model=model),
            Case(f"d=1e6, complete graph, n=16 (virtual){tag}", 16, 1_000_000, target=3.0, threat_model=model),
        ]
    for clients in (4, 8, 16, 100):
        for graph in ("full", "sparse"):
            listed.append(Case(f"n={clients} {graph}", clients, 10_000, graph=graph, dropout_rate=0.01, section="scaling"))
    for injected in (0.1, 0.3):
        listed.append(Case(f"n=100 sparse, {injected:.0%} drop", 100, 10_000, graph="sparse", dropout_rate=injected,
                           injected=injected, section="dropouts"))
    return listed


class NullServer:
    """The protocol's stage sequence and message sizes with no cryptography: the relay alone.

    Asks every client each stage; sums the MaskedInputCollection payloads (uint32, like
    the real server's sum of masked inputs)."""

    STAGES = ("AdvertiseKeys", "ShareKeys", "MaskedInputCollection", "Unmasking")

    def __init__(self, cohort: tuple[int, ...], dim: int) -> None:
        import numpy as np

        self.cohort, self.dim, self.index = cohort, dim, 0
        self.done = self.aborted = False
        self.abort_reason, self.survivors, self.rejections = None, cohort, []
        self.total = np.zeros(dim, dtype=np.uint32)

    @property
    def stage(self) -> str:
        return self.STAGES[self.index]

    def start(self) -> dict[int, bytes]:
        return {c: bytes(64) for c in self.cohort}

    def step(self, replies) -> dict[int, bytes]:
        import numpy as np

        if self.stage == "MaskedInputCollection":
            for reply in replies.values():
                np.add(self.total, np.frombuffer(reply, dtype=np.uint32), out=self.total)
        self.index += 1
        self.done = self.index == len(self.STAGES)
        return {} if self.done else {c: bytes(64 * len(self.cohort)) for c in self.cohort}


class NullClient:
    """Replies with the real sizes: 4 bytes per coordinate at MaskedInputCollection."""

    def __init__(self, dim: int, cohort_size: int) -> None:
        self.n, self.index, self.payload = cohort_size, 0, bytes(4 * dim)

    @property
    def stage(self) -> str:
        return NullServer.STAGES[self.index]

    def handle(self, message: bytes) -> bytes:
        stage = self.stage
        self.index += 1
        return self.payload if stage == "MaskedInputCollection" else bytes(100 * self.n)


def _config(case: Case):
    from fedsim.secure_sum.config import SecureSumConfig

    return SecureSumConfig(
        clip_range=1.0,
        modulus_bits=case.modulus_bits,
        graph=case.graph,
        neighbours=case.neighbours,
        dropout_rate=case.dropout_rate,
        max_abort_probability=1e-3,
        timeout_s=600.0,
        threat_model=case.threat_model,
    )


def _identities(case: Case) -> tuple[dict | None, dict | None]:
    """Under the active threat model: every client's identity key (derived from its id: a
    benchmark, not a deployment, so every process can compute the PKI without a store)."""
    if case.threat_model != "active":
        return None, None
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secagg.consistency import verify_key_bytes

    keys = {
        c: Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench-identity-%d" % c).digest())
        for c in range(1, case.clients + 1)
    }
    return keys, {c: verify_key_bytes(k) for c, k in keys.items()}


def _hosts(case: Case, processes: int) -> dict[int, tuple[int, ...]]:
    """Client ids spread round-robin over the client processes (ranks 1..processes)."""
    return {rank: tuple(range(rank, case.clients + 1, processes)) for rank in range(1, processes + 1)}


def _timed(fn, world_group) -> tuple[float, list[float]]:
    """(wall seconds from a barrier to the last rank done, CPU seconds of every rank)."""
    dist.barrier(group=world_group)
    cpu0, start = time.process_time(), time.perf_counter()
    fn()
    wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    cpu = time.process_time() - cpu0
    dist.all_reduce(wall, op=dist.ReduceOp.MAX, group=world_group)
    cpus = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(cpus, torch.tensor([cpu], dtype=torch.float64), group=world_group)
    return float(wall), [float(c) for c in cpus]


def _worker(rank: int, world: int, port: int, listed: list[Case], repeats: int, warmup: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    from fedsim.transport.vocabulary import Kind
    from fedsim.transport.relay import ClientRelay, ServerRelay
    from fedsim.transport.world import init_world
    from fedsim.secure_sum.dropouts import DropoutPlan
    from fedsim.secure_sum.config import reply_limit
    from fedsim.dp.randomness import secret_random
    from fedsim.secure_sum.exchange import client_secure_sum, server_secure_sum
    from fedsim.secure_sum.stages import client_stages, server_stages

    joined = init_world(rank=rank, world_size=world, local_rank=rank, init_method=f"tcp://127.0.0.1:{port}", timeout_s=3600.0)
    # a gloo group for the all_reduce baseline and the barriers only (fedsim's relay uses sockets)
    dist.init_process_group("gloo", store=dist.PrefixStore("bench", joined.store), rank=rank, world_size=world)
    world_group = dist.group.WORLD
    processes = world - 1
    relay = ServerRelay(joined.store, range(1, world), 1 << 20) if rank == 0 else ClientRelay(joined.store, 0, 3600.0, rank=rank)
    results = {}
    round_idx = 0
    for case in listed:
        config, hosts = _config(case), _hosts(case, processes)
        cohort = tuple(range(1, case.clients + 1))
        mine = hosts.get(rank, ())
        updates = {c: torch.randn(case.dim, generator=torch.Generator().manual_seed(c)) * 0.1 for c in mine}
        rounding = secret_random()
        identities, verify_keys = _identities(case)
        if rank == 0:
            relay.set_max_body_bytes(reply_limit(case.dim, case.clients, max(len(h) for h in hosts.values())))
        plan = DropoutPlan(rate=case.injected, stages=("MaskedInputCollection",), seed=1)
        outcomes, null_outcomes, secure, plain, cpu, null = [], [], [], [], [], []
        for i in range(warmup + repeats):
            round_idx += 1

            def secure_round(r=round_idx) -> None:
                if rank == 0:
                    outcomes.append(server_secure_sum(
                        relay, hosts, session=SESSION, round_idx=r, cohort=cohort, dim=case.dim, config=config,
                        verify_keys=verify_keys,
                    ).outcome)
                else:
                    client_secure_sum(
                        relay, mine, lambda ids: {c: updates[c] for c in ids}, session=SESSION, round_idx=r,
                        dim=case.dim, config=config, rounding=rounding, dropouts=plan,
                        identities=identities, verify_keys=verify_keys,
                    )

            def null_round(r=round_idx) -> None:
                if rank == 0:
                    null_outcomes.append(server_stages(
                        relay, hosts, NullServer(cohort, case.dim), round_idx=r, cohort=cohort, timeout_s=600.0
                    ))
                else:
                    client_stages(
                        relay, lambda c: {cid: NullClient(case.dim, len(c)) for cid in mine}, round_idx=r,
                        drops=lambda stage, cid: False, refusal=RuntimeError,
                    )

            def plain_round() -> None:
                local = torch.zeros(case.dim)
                for update in updates.values():
                    local.add_(update)
                dist.all_reduce(local, group=world_group)

            wall_secure, cpu_secure = _timed(secure_round, world_group)
            wall_plain, _ = _timed(plain_round, world_group)
            wall_null, _ = _timed(null_round, world_group) if case.section == "ratio" else (0.0, [])
            if i >= warmup:
                secure.append(wall_secure)
                plain.append(wall_plain)
                cpu.append(cpu_secure)
                null.append(wall_null)
        if rank == 0:
            results[case] = {
                "secure": secure, "plain": plain, "cpu": cpu, "null": null,
                "outcomes": outcomes[warmup:], "null_outcomes": null_outcomes[warmup:],
            }
    if rank == 0:
        relay.close("benchmark over", timeout_s=30.0)
        torch.save(results, Path(out_dir) / "results.pt")
    else:
        relay.receive(Kind.FINISH)
        relay.close()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shape(case: Case) -> str:
    threshold, neighbours = _config(case).shape(case.clients)
    return f"t={threshold} " + ("complete" if neighbours is None else f"k={neighbours}")


def _online(outcome) -> float:
    """Server seconds from the MaskedInputCollection requests to the end of the round."""
    return sum(seconds for stage, seconds in outcome.stage_seconds.items() if stage not in ("AdvertiseKeys", "ShareKeys"))


def _report(results: dict, processes: int, repeats: int) -> str:
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    lines = [
        f"secure aggregation round vs plain float32 all_reduce: 1 server + {processes} client processes "
        f"(n > {processes}: virtual clients), relay over TCP on 127.0.0.1, 1 torch thread each, "
        f"{os.cpu_count()} CPUs; medians of {repeats}",
        "",
        "secure: the whole round; online: MaskedInputCollection + Unmasking, the part after the update",
        "exists (AdvertiseKeys and ShareKeys need no data: fedsim runs them before local training)",
        "",
        "relay: the same round with a null protocol (same stages and message sizes, no crypto)",
        "",
        f"{'case':<40} {'params':<14} {'secure ms':>10} {'online ms':>10} {'relay ms':>9} {'plain ms':>9} "
        f"{'ratio':>7} {'online':>7} {'target':>7}  ok",
    ]
    for case, r in results.items():
        if case.section != "ratio":
            continue
        plain = statistics.median(r["plain"])
        ratio = statistics.median(r["secure"]) / plain
        online = statistics.median(_online(o) for o in r["outcomes"])
        ok = "yes" if ratio <= case.target else ("online" if online / plain <= case.target else "NO")
        lines.append(
            f"{case.name:<40} {_shape(case):<14} {ms(r['secure']):10.1f} {1e3 * online:10.1f} {ms(r['null']):9.1f} "
            f"{1e3 * plain:9.1f} "
            f"{ratio:6.2f}x {online / plain:6.2f}x {case.target:6.1f}x  {ok}"
        )
    lines += ["", "server time per stage (ms, relay included; 'relay:' the null protocol):"]
    for case, r in results.items():
        for label, outcomes in (("", r["outcomes"]), ("relay: ", r["null_outcomes"])):
            stages: dict[str, list[float]] = {}
            for outcome in outcomes:
                for stage, seconds in outcome.stage_seconds.items():
                    stages.setdefault(stage, []).append(seconds)
            if stages:
                name = f"{label}{case.name}"
                lines.append(f"  {name:<45} " + "  ".join(f"{s}={ms(v):.1f}" for s, v in stages.items()))
    lines += [
        "",
        "per-client cost vs n (d=1e4; dropout rate 1%, 2^-40 security, abort <= 1e-3; "
        "CPU = client processes' CPU seconds / n):",
        f"{'n':>5} {'graph':<7} {'params':<14} {'wall ms':>9} {'CPU ms/client':>14} {'server CPU ms':>14}",
    ]
    for case, r in results.items():
        if case.section != "scaling":
            continue
        per_client = statistics.median(sum(c[1:]) / case.clients for c in r["cpu"])
        server = statistics.median(c[0] for c in r["cpu"])
        lines.append(
            f"{case.clients:>5} {case.graph:<7} {_shape(case):<14} {ms(r['secure']):9.1f} "
            f"{1e3 * per_client:14.2f} {1e3 * server:14.1f}"
        )
    lines += [
        "",
        "server cost with dropouts at MaskedInputCollection (their pairwise masks are rebuilt from shares):",
        f"{'case':<30} {'params':<14} {'survivors':>9} {'wall ms':>9} {'server CPU ms':>14} {'Unmasking ms':>13}",
    ]
    for case, r in results.items():
        if case.section != "dropouts":
            continue
        survivors = statistics.median(len(o.survivors) for o in r["outcomes"])
        unmasking = ms([o.stage_seconds.get("Unmasking", 0.0) for o in r["outcomes"]])
        lines.append(
            f"{case.name:<30} {_shape(case):<14} {survivors:9.0f} {ms(r['secure']):9.1f} "
            f"{1e3 * statistics.median(c[0] for c in r['cpu']):14.1f} {unmasking:13.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4, help="client processes (1..4: at most 5 in all)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per case")
    parser.add_argument("--quick", action="store_true", help="3 repeats, no n=100 cases")
    args = parser.parse_args(argv)
    if not 1 <= args.processes <= 4:
        parser.error(f"--processes must be in [1, 4] (at most 5 processes), got {args.processes}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    listed = cases(args.processes)
    repeats = 3 if args.quick else args.repeats
    if args.quick:
        listed = [c for c in listed if c.clients <= 16]
    world = args.processes + 1
    mp.get_context("forkserver").set_forkserver_preload(["torch", "fedsim.secure_sum.exchange"])
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(world, _free_port(), listed, repeats, args.warmup, out_dir),
            nprocs=world,
            join=True,
            start_method="forkserver",
        )
        results = torch.load(Path(out_dir) / "results.pt", weights_only=False)
    print(_report(results, args.processes, repeats))


if __name__ == "__main__":
    main()
