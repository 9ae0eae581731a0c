"""``curves.png``: accuracy and ε against rounds, one line per method, from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from fedsim.rundir import METRICS_FILE, PLOT_FILE


def read_metrics(path: Path) -> list[dict]:
    """The rows of one method's metrics.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path, summaries: Sequence) -> Path:
    """Draw test accuracy (round 0 = untrained) and ε upper bound per round; return the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, eps_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for summary in summaries:
        rows = read_metrics(Path(summary.run_dir) / METRICS_FILE)
        evaluated = [r for r in rows if r["accuracy"] is not None]
        acc_ax.plot(
            [0] + [r["round"] for r in evaluated],
            [summary.initial_accuracy] + [r["accuracy"] for r in evaluated],
            marker="o", label=summary.method,
        )
        eps_ax.plot([0] + [r["round"] for r in rows], [0.0] + [r["epsilon"] for r in rows], marker=".", label=summary.method)
    acc_ax.set(title="test accuracy of the global model", xlabel="round", ylabel="accuracy", ylim=(0, 1))
    delta = summaries[0].delta if summaries else 0.0
    eps_ax.set(title=f"worst client's ε (PRV upper bound) at δ={delta:g}", xlabel="round", ylabel="ε")
    for ax in (acc_ax, eps_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    path = run_dir / PLOT_FILE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
