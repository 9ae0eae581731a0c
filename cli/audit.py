"""``fedsim audit``: a one-run empirical privacy audit, its ε lower bound beside the accountant's ε.

The run options are ``fedsim run``'s own rows of :data:`fedsim.options.FIELD_OPTIONS` (names,
help, defaults, allowed values; the same :func:`fedsim.config.build_config`), restricted to
those that shape one client's training or its client-level noise (:data:`AUDIT_FIELDS`); the
audit adds ``--level``, ``--canaries``, ``--observer``, ``--no-control``, ``--plot`` and
``--json``. The work is in :mod:`fedsim.audit.driver` (``--level sample``: canary records in
client 1, DP-SGD) and :mod:`fedsim.audit.client_level` (``--level client``: canary clients,
the distributed Skellam path), imported only when the command runs (``fedsim --help`` loads
no torch).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import typer

from cli.render import err, fail, invalid
from cli.run import option_help
from fedsim.errors import RUN_FAILED
from fedsim.options import FIELD_OPTIONS

AUDIT_FIELDS = (
    "methods", "dataset", "model", "pretrained", "img_size", "limit", "num_clients", "population", "cohort",
    "cohort_rate", "cohort_size", "partition", "dirichlet_alpha", "rounds", "local_steps", "batch_size",
    "noise_multiplier", "max_grad_norm", "delta", "lr", "head_lr", "b_lr_ratio", "smoothing", "lora_rank",
    "optimizer", "max_length", "seed", "threads_per_process", "client_noise_multiplier", "client_clip",
    "secagg_modulus_bits",
)
"""The ``fedsim run`` options ``fedsim audit`` takes, as their RunConfig field names."""

OBSERVER_NAMES = ("step", "client-update", "aggregate")
"""``--observer`` values (fedsim.audit.observers.OBSERVERS, repeated so ``--help`` needs no torch)."""

LEVELS = ("sample", "client")
"""``--level`` values: sample-level DP-SGD (canary records) or client-level Skellam (canary clients)."""

AUDIT_HELP = """Audit the privacy of one training run: canaries in client 1, the ε they prove, beside the accountant's ε.

A one-run audit (Steinke, Nasr, Jagielski, NeurIPS 2023): --canaries white-box gradient canaries (norm C on one coordinate of LoRA A, B or the head each) are each included in client 1's data with probability 1/2 and, when included, enter every local step's Poisson sample at the records' rate q, through the real clipping, noise, smoothing and factor alternation. The observer scores each canary; the top scores are guessed in, the bottom ones out, and the correct guesses give an ε lower bound at 95% confidence (Theorem 3 of the paper, with δ). A lower bound above the accountant's ε would mean the implementation leaks more than it claims. The control run (σ = 0) shows what the canaries can prove when nothing protects them.

Client level (--level client): --canaries canary clients join every round's cohort beside the run's planned cohort, each a member w.p. 1/2 for the whole run; a member sends --client-clip S on one coordinate of the audited method's update (its real dimension), a non-member a zero update (the zero-out adjacency: it still adds its noise share). Every member's update goes through the real Skellam encoding (clip, scale, rotation, conditional rounding, its noise share at --client-sigma z); the ring sum is decoded as the server decodes it, and a canary's score is its coordinate summed over --rounds. The accountant's ε is a canary client's client-level ε against the server (Skellam RDP, no cohort amplification); the control runs at z = 0.

Observers (sample level): step (every noisy gradient of client 1: what DP-SGD's accounting covers), client-update (client 1's update after each phase), aggregate (the cohort's summed update: what the server sees under secure aggregation).

Examples:

  fedsim audit --canaries 1000 --observer step

  fedsim audit --method dp-lora --sigma 0.8 --rounds 4 --optimizer sgd --observer client-update --json

  fedsim audit --level client --client-sigma 4 --client-clip 1 --rounds 4 --canaries 1000 --json
"""


def _parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def audit_parameters() -> list[inspect.Parameter]:
    """``--config``, one option per :data:`AUDIT_FIELDS` row (as ``fedsim run`` spells it), then the audit's own."""
    rows = {option.field: option for option in FIELD_OPTIONS}
    params = [_parameter("config_file", Optional[Path], typer.Option(None, "--config", "-c", help="TOML file of run options (underscored names); options given here override it."))]
    for field in AUDIT_FIELDS:
        row = rows[field]
        params.append(_parameter(field, Optional[row.cli_type], typer.Option(None, *(row.flags or (f"--{field.replace('_', '-')}",)), help=option_help(row))))
    params += [
        _parameter("level", str, typer.Option("sample", "--level", help="sample: canary records in client 1 (DP-SGD); client: canary clients in the cohort (the Skellam client-level path).")),
        _parameter("canaries", int, typer.Option(1000, "--canaries", help="Gradient canaries in client 1, or canary clients with --level client (each included w.p. 1/2); at most the released parameters' size.")),
        _parameter("observer", str, typer.Option("step", "--observer", help=f"What the auditor sees (sample level): {', '.join(OBSERVER_NAMES)}. At client level the observer is the server (the decoded secure sum).")),
        _parameter("no_control", bool, typer.Option(False, "--no-control", help="Skip the control run at σ = 0 (z = 0 at client level; halves the time).")),
        _parameter("plot", Optional[Path], typer.Option(None, "--plot", help="PNG of member vs non-member scores (default runs/audit-<time>-<method>-<observer>.png).")),
        _parameter("as_json", bool, typer.Option(False, "--json", help="Print one JSON object: empirical_epsilon_lower, epsilon (accountant), guesses, control, plot.")),
        _parameter("verbose", bool, typer.Option(False, "--verbose", "-v", help="Log progress.")),
    ]
    return params


def plot_scores(path: Path, runs: dict[str, Any], *, noise: str = "σ") -> Path:
    """Histograms of member and non-member canary scores, one panel per run (label → AuditRun or
    ClientLevelRun); ``noise`` names the noise multiplier in the titles (z at client level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), constrained_layout=True, squeeze=False)
    for ax, (label, run) in zip(axes[0], runs.items()):
        import numpy as np

        bins = np.histogram_bin_edges(run.scores, bins=40)  # shared, so the two histograms compare
        ax.hist(run.scores[run.members], bins=bins, alpha=0.6, label=f"members ({int(run.members.sum())})")
        ax.hist(run.scores[~run.members], bins=bins, alpha=0.6, label=f"non-members ({int((~run.members).sum())})")
        g = run.bound.guesses
        ax.set(
            title=f"{label}: {noise}={run.noise_multiplier:g}, ε ≥ {run.bound.epsilon:.2f} ({g.correct}/{g.count} correct)",
            xlabel="canary score", ylabel="canaries",
        )
        ax.legend()
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def audit_command(
    *, config_file: Path | None, level: str, canaries: int, observer: str, no_control: bool, plot: Path | None,
    as_json: bool, verbose: bool, **fields: Any,
) -> None:
    from fedsim.config import build_config, load_config_file

    if level not in LEVELS:
        invalid("--level", level, f"one of {LEVELS}")
    if observer not in OBSERVER_NAMES:
        invalid("--observer", observer, f"one of {OBSERVER_NAMES}")
    if canaries < 2:
        invalid("--canaries", canaries, "an integer >= 2")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(load_config_file(config_file) if config_file else {}, **fields)
    except TypeError as exc:  # a value of a type no rule expected
        fail(str(exc))
    if level == "client":
        _client_level(config, canaries=canaries, no_control=no_control, plot=plot, as_json=as_json)
        return
    import torch

    from fedsim.audit.driver import audit

    torch.set_num_threads(config.threads_per_process)
    started = time.perf_counter()
    report = audit(config, canaries=canaries, observer=observer, control=not no_control)
    seconds = time.perf_counter() - started
    runs = {"audited": report.audited} | ({"control (σ=0)": report.control} if report.control else {})
    target = plot or Path(f"runs/audit-{time.strftime('%Y%m%d-%H%M%S')}-{report.method}-{observer}.png")
    plot_scores(target, runs)
    result = report.to_dict() | {"plot": str(target), "seconds": seconds}
    if as_json:
        typer.echo(json.dumps(result))
        _exit_on_violation(report.audited.bound.epsilon, report.epsilon.upper)
        return
    typer.echo(
        f"{report.method}, observer {observer}: {canaries} canaries ({int(report.audited.members.sum())} members), "
        f"σ={report.noise_multiplier:g}, q={report.sample_rate:.4g}, {report.steps} steps, δ={config.delta:g}"
    )
    _echo_verdict(report, report.epsilon.upper, report.epsilon.method, noise="σ")
    err.print(f"scores: {target}   ({seconds:.1f} s)")
    _exit_on_violation(report.audited.bound.epsilon, report.epsilon.upper)


def _echo_verdict(report: Any, claimed: float, accountant: str, *, noise: str) -> None:
    """The audit's lines, either level: the empirical lower bound and its guesses, the accountant's ε, the control."""
    g = report.audited.bound.guesses
    typer.echo(
        f"  empirical ε ≥ {report.audited.bound.epsilon:.3f} (95% confidence; {g.correct} of {g.count} guesses correct, "
        f"k+={g.k_plus}, k-={g.k_minus})\n"
        f"  accountant   ε ≤ {claimed:.3f} ({accountant})"
    )
    if report.control is not None:
        c = report.control.bound
        typer.echo(f"  control {noise}=0: ε ≥ {c.epsilon:.3f} ({c.guesses.correct} of {c.guesses.count} correct): the audit's power")


def _client_level(config: Any, *, canaries: int, no_control: bool, plot: Path | None, as_json: bool) -> None:
    """``--level client``: canary clients through the Skellam path, beside a canary's ε against the server."""
    if config.client_noise_multiplier <= 0:
        invalid("--client-sigma", config.client_noise_multiplier, "a number > 0 (the claimed client-level noise z to audit)")
    import torch

    from fedsim.audit.client_level import audit_config

    torch.set_num_threads(config.threads_per_process)
    started = time.perf_counter()
    report = audit_config(config, canaries=canaries, control=not no_control)
    seconds = time.perf_counter() - started
    runs = {"audited": report.audited} | ({"control (z=0)": report.control} if report.control else {})
    target = plot or Path(f"runs/audit-{time.strftime('%Y%m%d-%H%M%S')}-{config.methods[0]}-client.png")
    plot_scores(target, runs, noise="z")
    result = report.to_dict() | {"method": config.methods[0], "plot": str(target), "seconds": seconds}
    if as_json:
        typer.echo(json.dumps(result))
        _exit_on_violation(report.audited.bound.epsilon, report.claimed_epsilon)
        return
    p = report.params
    typer.echo(
        f"{config.methods[0]}, client level (observer: the server): {canaries} canary clients "
        f"({int(report.audited.members.sum())} members) beside {report.real_clients} others, "
        f"z={report.noise_multiplier:g}, S={report.clip:g}, {report.rounds} rounds, d={p.dim} (padded {p.padded_dim}), "
        f"δ={config.delta:g}"
    )
    _echo_verdict(report, report.claimed_epsilon, f"a canary client against the server, {report.epsilon.method}", noise="z")
    err.print(f"scores: {target}   ({seconds:.1f} s)")
    _exit_on_violation(report.audited.bound.epsilon, report.claimed_epsilon)


def _exit_on_violation(lower: float, claimed: float) -> None:
    """Exit 1 when the audit's lower bound ``lower`` proves more leakage than the accountant's ``claimed`` ε."""
    if lower > claimed:
        err.print("[bold red]the empirical ε lower bound exceeds the accountant's ε: the implementation leaks more than it claims[/]")
        raise typer.Exit(RUN_FAILED)


audit_command.__signature__ = inspect.Signature(audit_parameters())  # what typer reads
audit_command.__doc__ = AUDIT_HELP
