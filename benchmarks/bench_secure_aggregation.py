"""Benchmark: one secure-aggregation round vs a plain float32 all_reduce.

Starts 1 server + ``--clients`` client processes on this machine (gloo on 127.0.0.1,
one torch thread each) and, for each ``--dims`` entry, alternates ``--repeats``
times between

  (a) one full secure round (fedsim.secure_sum: fresh X25519 keys, key agreement,
      encode, mask, send, sum, decode), and
  (b) a plain ``dist.all_reduce`` of a float32 update of the same size over the
      same processes (the server contributes zeros),

each timed from a barrier to the moment the last rank is done (max over ranks).
Prints medians, the ratio secure/plain against the targets, and the median time
of every protocol stage (from the DEBUG records of fedsim.secure_sum).

    .venv/bin/python benchmarks/bench_secure_aggregation.py --dims 100000 1000000
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TARGETS = {100_000: 1.3, 1_000_000: 2.5}
SESSION = bytes.fromhex("be9c4ba5e1a2b3c4d5e6f708192a3b4c")
CONFIG_CLIP = 1.0


class _StageRecorder(logging.Handler):
    """Collects the stage timings that fedsim.secure_sum logs at DEBUG level.

    A stage logged more than once in a round (a client's AdvertiseKeys: send, then
    wait for the roster) counts as the sum of its parts.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._round: dict[str, float] = defaultdict(float)

    def emit(self, record: logging.LogRecord) -> None:
        stage = getattr(record, "secagg_stage", None)
        if stage is not None:
            role = "server" if record.secagg_role == "server" else "client"
            self._round[f"{role}:{stage}"] += record.secagg_seconds

    def end_round(self, keep: bool) -> None:
        if keep:
            for key, seconds in self._round.items():
                self.seconds[key].append(seconds)
        self._round.clear()


def _timed(fn: object, group: dist.ProcessGroup) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn``: wall from a barrier to the last rank finishing
    (max over ranks); cpu the process time of all ranks together (sum over ranks),
    read outside the timed region (process_time is slow here), so it includes the
    barrier, the same for both contenders."""
    cpu_start = time.process_time()
    dist.barrier(group=group)
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    cpu = torch.tensor([time.process_time() - cpu_start], dtype=torch.float64)
    dist.all_reduce(wall, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(cpu, op=dist.ReduceOp.SUM, group=group)
    return float(wall), float(cpu)


def _worker(rank: int, world: int, port: int, dims: list[int], repeats: int, warmup: int,
            out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    from fedsim.secure_sum import SecureSumConfig, client_secure_sum, server_secure_sum

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    group = dist.new_group(backend="gloo")
    recorder = _StageRecorder()
    logger = logging.getLogger("fedsim.secure_sum")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(recorder)
    config = SecureSumConfig(clip_range=CONFIG_CLIP)
    num_clients = world - 1
    results = {}
    round_idx = 0
    for dim in dims:
        gen = torch.Generator().manual_seed(rank)
        update = (torch.randn(dim, generator=gen) * 0.1 if rank else torch.zeros(dim))

        def secure() -> None:
            if rank == 0:
                server_secure_sum(dim=dim, round_idx=round_idx, session=SESSION,
                                  num_clients=num_clients, config=config, group=group)
            else:
                client_secure_sum(update, client_id=rank, round_idx=round_idx,
                                  session=SESSION, num_clients=num_clients, config=config,
                                  generator=gen, group=group)

        secure_s, plain_s, secure_cpu, plain_cpu = [], [], [], []
        recorder.seconds.clear()
        for i in range(warmup + repeats):
            t_secure, c_secure = _timed(secure, group)
            recorder.end_round(keep=i >= warmup)
            round_idx += 1
            buffer = update.clone()
            t_plain, c_plain = _timed(lambda: dist.all_reduce(buffer, group=group), group)
            if i >= warmup:
                secure_s.append(t_secure)
                plain_s.append(t_plain)
                secure_cpu.append(c_secure)
                plain_cpu.append(c_plain)
        stages = [None] * world
        dist.all_gather_object(stages, dict(recorder.seconds), group=group)
        results[dim] = {"secure": secure_s, "plain": plain_s, "secure_cpu": secure_cpu,
                        "plain_cpu": plain_cpu, "stages": stages}
    if rank == 0:
        torch.save(results, Path(out_dir) / "results.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _report(results: dict, clients: int) -> str:
    lines = [
        f"secure aggregation vs plain all_reduce: 1 server + {clients} clients, gloo, "
        "1 thread/process (medians, ms)",
        f"{'d':>10} {'secure':>9} {'plain':>9} {'ratio':>7} {'target':>7}  ok"
        f"   {'cpu secure':>10} {'cpu plain':>9}  (cpu: sum over ranks)",
    ]
    for dim, r in results.items():
        secure = 1e3 * statistics.median(r["secure"])
        plain = 1e3 * statistics.median(r["plain"])
        ratio = secure / plain
        target = TARGETS.get(dim)
        ok = "-" if target is None else ("yes" if ratio <= target else "NO")
        tgt = "-" if target is None else f"{target:.1f}x"
        cpu_secure = 1e3 * statistics.median(r["secure_cpu"])
        cpu_plain = 1e3 * statistics.median(r["plain_cpu"])
        lines.append(
            f"{dim:>10} {secure:9.2f} {plain:9.2f} {ratio:6.2f}x {tgt:>7}  {ok:<3}"
            f"  {cpu_secure:10.2f} {cpu_plain:9.2f}"
        )
    lines.append("")
    lines.append("stage medians (ms; client stages: median over clients and repeats)")
    for dim, r in results.items():
        merged: dict[str, list[float]] = defaultdict(list)
        for per_rank in r["stages"]:
            for key, values in per_rank.items():
                merged[key].extend(values)
        parts = [f"{k}={1e3 * statistics.median(v):.2f}" for k, v in sorted(merged.items())]
        lines.append(f"{dim:>10}  " + "  ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=lambda s: int(float(s)), nargs="+",
                        default=[100_000, 1_000_000], help="update sizes (e.g. 1e5 1e6)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per size")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.clients > 4:
        parser.error(f"--clients must be in [1, 4] (at most 5 processes), got {args.clients}")
    if min(args.dims) < 1:
        parser.error(f"--dims must all be >= 1, got {args.dims}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    world = args.clients + 1
    mp.get_context("forkserver").set_forkserver_preload(["torch", "fedsim.secure_sum"])
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(world, _free_port(), args.dims, args.repeats, args.warmup, out_dir),
            nprocs=world,
            join=True,
            start_method="forkserver",
        )
        results = torch.load(Path(out_dir) / "results.pt", weights_only=False)
    print(_report(results, args.clients))


if __name__ == "__main__":
    main()
