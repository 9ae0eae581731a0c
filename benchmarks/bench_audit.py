"""``fedsim audit`` wall time on the default model (MiniLM + LoRA, bundled data, the default job's settings).

One audit as ``fedsim audit --canaries 1000`` runs it — the audited run at the default σ and
its control at σ = 0 — under each observer asked for, timed end to end (task load
included), with the figures it printed: the empirical ε lower bound at 95%, the guesses
behind it, the accountant's ε and the control's bound.

    python benchmarks/bench_audit.py [--canaries 1000] [--observer step] [--observer client-update] [--no-control]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from fedsim.audit.driver import audit
from fedsim.config import RunConfig
from fedsim.launch import configure_process_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--observer", action="append", choices=("step", "client-update", "aggregate"))
    parser.add_argument("--no-control", action="store_true")
    args = parser.parse_args()
    configure_process_logging(logging.WARNING, None)
    config = RunConfig()  # the bundled default job
    torch.set_num_threads(config.threads_per_process)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"default job: {config.methods[0]}, {config.model}, {config.rounds} rounds x {config.local_steps} steps, "
        f"B={config.batch_size}, σ={config.noise_multiplier}, C={config.max_grad_norm}, {config.num_clients} clients, "
        f"{args.canaries} canaries, {device}, {torch.get_num_threads()} thread(s)"
    )
    for observer in args.observer or ["step"]:
        started = time.perf_counter()
        report = audit(config, canaries=args.canaries, observer=observer, control=not args.no_control)
        seconds = time.perf_counter() - started
        out = report.to_dict()
        control = out["control"]
        print(
            f"observer {observer}: {seconds:.1f} s wall; empirical ε ≥ {out['empirical_epsilon_lower']:.3f} "
            f"({out['guesses']['correct']}/{out['guesses']['guesses']} correct) vs accountant ε ≤ {out['epsilon']:.3f} "
            f"(q={out['sample_rate']:.4f}, {out['steps']} steps)"
            + ("" if control is None else f"; control σ=0: ε ≥ {control['empirical_epsilon_lower']:.3f} "
               f"({control['guesses']['correct']}/{control['guesses']['guesses']} correct)")
        )
        print(json.dumps({"observer": observer, "seconds": seconds, **{k: out[k] for k in ("empirical_epsilon_lower", "epsilon", "guesses")}, "control": control}))


if __name__ == "__main__":
    main()
