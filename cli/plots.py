"""Plots: the run's ``curves.png`` (accuracy and ε per round), ``fedsim budget curve`` and ``plan``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from fedsim.rundir import METRICS_FILE, PLOT_FILE


def read_metrics(path: Path) -> list[dict]:
    """The rows of one method's metrics.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path, summaries: Sequence) -> Path:
    """Draw test accuracy (round 0 = untrained) and ε upper bound per round; return the PNG path."""
    plt = _pyplot()
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


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, out: Path) -> Path:
    """ε axes from 0, a light grid and a small legend; write the PNG and free the figure."""
    plt = _pyplot()

    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_budget_curves(histories: Mapping[str, Sequence], out: Path, delta: float) -> Path:
    """ε against rounds per method from ledger replays (``accounting.budget_history``).

    Per method, one colour: the worst client's PRV upper bound (solid, its final value
    written at the end), the median client (dashed), the min-max band over clients
    (shaded), the worst client's RDP bound (dotted) and, with client-level DP, the
    population's ε (dash-dot).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (method, history) in enumerate(histories.items()):
        colour = colours[index % len(colours)]
        rows = [s for s in history if s.clients]
        rounds = [s.round for s in rows]
        if rows:
            quantiles = [s.quantiles() for s in rows]
            worst = [s.worst() for s in rows]
            ax.fill_between(rounds, [q[0.0] for q in quantiles], [q[1.0] for q in quantiles], color=colour, alpha=0.15,
                            label=f"{method}: min-max over {len(rows[-1].clients)} clients")
            ax.plot(rounds, [w.prv.upper for w in worst], color=colour, marker="o", markersize=3,
                    label=f"{method}: worst client (PRV upper, the guarantee)")
            ax.plot(rounds, [q[0.5] for q in quantiles], color=colour, linestyle="--", label=f"{method}: median client")
            ax.plot(rounds, [w.rdp for w in worst], color=colour, linestyle=":", label=f"{method}: worst client, RDP bound")
            ax.annotate(f"{worst[-1].prv.upper:.3g}", (rounds[-1], worst[-1].prv.upper), textcoords="offset points",
                        xytext=(4, 4), color=colour)
        population = [s for s in history if s.population is not None]
        if population:
            ax.plot([s.round for s in population], [s.population.prv.upper for s in population], color=colour,
                    linestyle="-.", label=f"{method}: client-level ε (population)")
    ax.set(title=f"privacy spent: ε against rounds at δ={delta:g}", xlabel="round", ylabel="ε")
    return _save(fig, ax, out)


def plot_plan_curve(curve: Sequence, out: Path, calibration, schedule: str) -> Path:
    """The ε curve a calibrated noise multiplier implies (``accounting.calibration.schedule_curve``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), constrained_layout=True)
    rounds = [p.round for p in curve]
    ax.fill_between(rounds, [p.prv.lower for p in curve], [p.prv.upper for p in curve], alpha=0.2, label="PRV band (lower to upper)")
    ax.plot(rounds, [p.prv.upper for p in curve], marker=".", label="PRV upper bound (the guarantee)")
    ax.plot(rounds, [p.rdp for p in curve], linestyle=":", label="RDP bound")
    ax.axhline(calibration.target_epsilon, color="grey", linestyle="--", label=f"target ε={calibration.target_epsilon:g}")
    ax.set(
        title=f"σ = {calibration.noise_multiplier:.4g} at δ={calibration.epsilon.delta:g}\n{schedule}",
        xlabel="round", ylabel="ε",
    )
    return _save(fig, ax, out)
