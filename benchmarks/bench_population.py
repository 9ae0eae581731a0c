"""Cross-device populations: orchestration share of a round, and memory per process.

Runs `fedsim run` with a population of 1000 virtual clients on 4 client processes and a
cohort of 50 a round (the default text task and model), then reads metrics.jsonl: every
round's wall time split into the server's wait for local training, evaluation, and the
rest — orchestration (cohort, relay, secure aggregation, ledger, accounting, checkpoint).
Target: orchestration <= 10% of round time. While the job runs, the resident memory of
the server and of every client process is sampled (psutil); the peaks are printed.

    python benchmarks/bench_population.py [--population 1000] [--cohort 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

TARGET_SHARE = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, default=1000)
    parser.add_argument("--cohort", type=int, default=50)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--graph", default="sparse", choices=["full", "sparse"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            sys.executable, "-m", "fedsim", "run", "--run-dir", str(run_dir), "--clients", str(args.processes),
            "--population", str(args.population), "--cohort", "fixed", "--cohort-size", str(args.cohort),
            "--rounds", str(args.rounds), "--eval-every", str(args.rounds), "--secagg-graph", args.graph,
            "--limit", "4800",
        ]
        job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        root = psutil.Process(job.pid)
        peak: dict[int, tuple[str, int]] = {}
        while job.poll() is None:
            try:
                for proc in [root, *root.children(recursive=True)]:
                    rss = proc.memory_info().rss
                    name = "server (rank 0)" if proc.pid == root.pid else " ".join(proc.cmdline()[-1:])[:40]
                    if rss > peak.get(proc.pid, ("", 0))[1]:
                        peak[proc.pid] = (name, rss)
            except psutil.Error:
                pass
            time.sleep(0.5)
        stdout, stderr = job.communicate()
        if job.returncode != 0:
            sys.exit(f"the job failed ({job.returncode}):\n{stderr[-3000:]}")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"population {args.population} on {args.processes} processes, fixed cohort {args.cohort}, {args.graph} graph")
    print("round  seconds  training  evaluation  orchestration  share")
    for r in rows:
        orchestration = r["seconds"] - r["train_seconds"] - r["eval_seconds"]
        print(f"{r['round']:>5}  {r['seconds']:7.2f}  {r['train_seconds']:8.2f}  {r['eval_seconds']:10.2f}  "
              f"{orchestration:13.2f}  {orchestration / r['seconds']:5.1%}")
    total = sum(r["seconds"] for r in rows)
    orchestration = total - sum(r["train_seconds"] + r["eval_seconds"] for r in rows)
    share = orchestration / total
    print(f"orchestration {orchestration:.2f} s of {total:.2f} s = {share:.1%} "
          f"(target <= {TARGET_SHARE:.0%}: {'PASS' if share <= TARGET_SHARE else 'MISS'})")
    mib = [rss / 2**20 for _, rss in peak.values()]
    print(f"peak resident memory: server {peak[root.pid][1] / 2**20:.0f} MiB; "
          f"largest process {max(mib):.0f} MiB; all {len(mib)} processes {sum(mib):.0f} MiB")


if __name__ == "__main__":
    main()
