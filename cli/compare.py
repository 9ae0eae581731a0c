"""``fedsim compare``: methods × ε targets × seeds under the same, correctly accounted privacy.

Every (ε target, seed) cell is one `fedsim run` job holding all the methods: every method
runs the same number of DP-SGD steps per client per round (multi-phase methods split
them), so one calibrated σ gives all of them the same sample-level (ε, δ) on the same data
split. Results: ``results.csv`` (one row per method × ε × seed), ``results.md`` (mean ± std
per method and ε), ``accuracy_vs_epsilon.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import typer

from cli.render import fail
from cli.run import start_job
from fedsim.methods.registry import METHOD_NAMES

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "accuracy_vs_epsilon.png"
ALL_METHODS = ",".join(METHOD_NAMES)


@dataclass(frozen=True)
class CompareRow:
    """One method's outcome in one (ε target, seed) job."""

    method: str
    target_epsilon: float
    seed: int
    noise_multiplier: float
    accuracy: float
    epsilon: float
    delta: float
    run_dir: str
    seconds: float


def parse_floats(text: str, field: str) -> list[float]:
    """``"1,3"`` -> [1.0, 3.0]; a clear error names the option."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{field}={text!r} is invalid: expected comma-separated numbers") from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{field}={text!r} is invalid: expected comma-separated numbers > 0")
    return values


def parse_ints(text: str, field: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{field}={text!r} is invalid: expected comma-separated integers") from None
    if not values:
        raise typer.BadParameter(f"{field}={text!r} is invalid: expected at least one integer")
    return values


def mean_std(values: Sequence[float]) -> str:
    """``0.812 ± 0.013`` (sample std; ``± –`` for a single seed)."""
    mean = statistics.fmean(values)
    spread = f"{statistics.stdev(values):.3f}" if len(values) > 1 else "–"
    return f"{mean:.3f} ± {spread}"


def markdown_table(rows: Iterable[CompareRow]) -> str:
    """Accuracy (mean ± std over seeds) per method and ε target, with the calibrated σ."""
    rows = list(rows)
    targets = sorted({r.target_epsilon for r in rows})
    methods = list(dict.fromkeys(r.method for r in rows))
    header = "| method | " + " | ".join(f"ε = {t:g}" for t in targets) + " |"
    lines = [header, "|" + "---|" * (len(targets) + 1)]
    for method in methods:
        cells = []
        for target in targets:
            accs = [r.accuracy for r in rows if r.method == method and r.target_epsilon == target]
            cells.append(mean_std(accs) if accs else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    sigmas = ", ".join(
        f"ε={t:g}: σ={statistics.fmean(r.noise_multiplier for r in rows if r.target_epsilon == t):.3f}" for t in targets
    )
    delta = rows[0].delta if rows else 0.0
    seeds = sorted({r.seed for r in rows})
    lines.append("")
    lines.append(f"Test accuracy, mean ± std over seeds {seeds}; sample-level (ε, δ={delta:g}) per client; calibrated {sigmas}.")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[CompareRow], path: Path) -> None:
    fields = list(CompareRow.__dataclass_fields__)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({f: getattr(r, f) for f in fields})


def plot_accuracy_vs_epsilon(rows: Sequence[CompareRow], path: Path) -> Path:
    """Mean accuracy (error bars: std over seeds) against the ε target, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for method in dict.fromkeys(r.method for r in rows):
        targets = sorted({r.target_epsilon for r in rows if r.method == method})
        accs = [[r.accuracy for r in rows if r.method == method and r.target_epsilon == t] for t in targets]
        means = [statistics.fmean(a) for a in accs]
        stds = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs]
        ax.errorbar(targets, means, yerr=stds, marker="o", capsize=3, label=method)
    delta = rows[0].delta if rows else 0.0
    ax.set(xscale="log", xlabel=f"ε (sample-level, δ={delta:g})", ylabel="test accuracy", title="accuracy at equal privacy")
    all_targets = sorted({r.target_epsilon for r in rows})
    ax.set_xticks(all_targets, [f"{t:g}" for t in all_targets])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_command(
    methods: str = typer.Option(ALL_METHODS, "--method", "-m", help="Comma-separated methods to compare."),
    epsilons: str = typer.Option("1,3", "--epsilons", "-e", help="Comma-separated sample-level ε targets; σ is calibrated for each."),
    seeds: str = typer.Option("0", "--seeds", "-s", help="Comma-separated public seeds (data split, partition, init)."),
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML with the other run options (as for `fedsim run`)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default runs/compare-<time>); must be new or empty."),
) -> None:
    """Compare methods at equal privacy: every method calibrated to the same (ε, δ) on the same data.

    One `fedsim run` job per (ε, seed), all methods inside it; writes results.csv, results.md
    (mean ± std over seeds) and accuracy_vs_epsilon.png to --out.

    Example (the README's table):

      fedsim compare --epsilons 1,3 --seeds 0,1
    """
    from fedsim.config import build_config, load_config_file
    from fedsim.launch import configure_process_logging
    from fedsim.preflight import preflight

    configure_process_logging(logging.WARNING)
    targets = parse_floats(epsilons, "epsilons")
    seed_list = parse_ints(seeds, "seeds")
    out = out or Path(f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        fail(f"out={str(out)!r} is invalid: expected a new or empty directory")
    file_values = load_config_file(config_file) if config_file else {}
    try:
        configs = {
            (target, seed): preflight(build_config(file_values, methods=methods, target_epsilon=target, seed=seed, run_dir=str(out / f"eps{target:g}-seed{seed}")))
            for target in targets
            for seed in seed_list
        }
    except TypeError as exc:  # a value of a type no rule expected
        fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[CompareRow] = []
    for (target, seed), config in configs.items():
        summaries = start_job(config, Path(config.run_dir))
        rows.extend(
            CompareRow(s.method, target, seed, config.noise_multiplier, s.accuracy, s.epsilon, s.delta, s.run_dir, s.seconds)
            for s in summaries
        )
        write_csv(rows, out / RESULTS_CSV)  # after every job: nothing lost on a crash
    (out / RESULTS_MD).write_text(markdown_table(rows))
    plot_accuracy_vs_epsilon(rows, out / RESULTS_PNG)
    typer.echo((out / RESULTS_MD).read_text())
    typer.echo(json.dumps({"out": str(out), "rows": [r.__dict__ for r in rows]}))
