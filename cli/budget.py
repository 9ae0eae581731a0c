"""``fedsim budget ...``: auditors' queries on a run's ledger (every ε recomputed from it alone).

Exit codes: 0 success (``verify``: everything checked out), 1 a damaged or tampered
ledger / a failed verification, 2 bad input (a message names the option, the value and
the allowed range).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape

from cli.render import (
    budget_table,
    client_level_line,
    client_level_rows,
    client_level_table,
    fail,
    fmt,
    invalid,
    plan_table,
    worst_line,
)
from cli.reported import compare_reported
from fedsim.rundir import LEDGER_FILE, find_ledgers

budget_app = typer.Typer(
    help=(
        "Privacy budgets of a run, recomputed from its ledger alone: who spent what ε, at which δ, "
        "under which mechanism, and a check that nobody edited the record afterwards."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RUN_DIR_HELP = "A run directory written by `fedsim run` (its ledger.jsonl, or one per method folder)."
DELTA_HELP = "δ at which to report ε, in (0, 1) (default: the δ recorded in the ledger)."


def check_delta(delta: Optional[float]) -> None:
    if delta is not None and not (math.isfinite(delta) and 0.0 < delta < 1.0):
        invalid("--delta", delta, "a number in (0, 1), e.g. 1e-5")


def run_ledgers(run_dir: Path) -> dict[str, Path]:
    """The run's ledgers by method, or exit 2."""
    if not run_dir.is_dir():
        invalid("RUN_DIR", str(run_dir), "an existing run directory")
    ledgers = find_ledgers(run_dir)
    if not ledgers:
        fail(f"RUN_DIR={str(run_dir)!r} is invalid: it holds no {LEDGER_FILE} (nor one per method folder)")
    return ledgers


def load_records(path: Path) -> list:
    """The ledger's records, or exit 1 naming the damaged line."""
    from accounting import LedgerError, read_ledger

    try:
        return read_ledger(path)
    except LedgerError as exc:
        fail(f"{exc} (run `fedsim budget verify` for a full report)", code=1)


def ledger_delta(records: Sequence, delta: Optional[float]) -> float:
    return delta if delta is not None else (records[0].delta if records else 1e-5)


# ---------------------------------------------------------------------------------- show


@budget_app.command("show")
def show_command(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    client: Optional[int] = typer.Option(None, "--client", help="Only this client id (see the table for the ids)."),
    round_: Optional[int] = typer.Option(None, "--round", help="Budgets after this round (default: the last)."),
    delta: Optional[float] = typer.Option(None, "--delta", help=DELTA_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV rows instead of a table."),
) -> None:
    """Each client's ε, recomputed from the ledger; the worst client and quantiles.

    Sample level (DP-SGD on a client's records), per client: the PRV upper
    bound (the guarantee), estimate and lower bound, the RDP bound beside it and
    how much looser RDP is; then the worst client and quantiles of ε over
    clients.

    Client level (distributed Skellam under secure aggregation), per client,
    two figures named by adversary: "client-level ε vs server" (the server picks
    the cohort and sees who took part, so no cohort amplification: the sums the
    client's share reached, composed) and "vs observers of released models"
    (amplified by Poisson cohorts over every released sum; none claimed for
    fixed-size cohorts; never above the server figure).

    Nothing from the run is trusted but the ledger's mechanism records: the
    composition is redone here, so the figures can be checked against what
    `fedsim run` printed. The method column says how each figure was computed:
    prv, or a sound fallback (rdp; analytic_gaussian at sampling rate 1) where
    PRV numerics fail; skellam_rdp for client-level Skellam figures.

    Examples:

      fedsim budget show runs/demo

      fedsim budget show runs/demo --client 3 --round 40 --delta 1e-6

      fedsim budget show runs/demo --csv > budget.csv
    """
    from accounting import DistributedSkellam, budget_snapshot

    check_delta(delta)
    if as_json and as_csv:
        fail("--json and --csv are exclusive: pick one output format")
    if client is not None and client < 0:
        invalid("--client", client, "a client id >= 0")
    ledgers = run_ledgers(run_dir)
    loaded = {method: load_records(path) for method, path in ledgers.items()}
    all_records = [r for records in loaded.values() for r in records]
    if client is not None:
        known = {r.client for r in all_records if r.client is not None}
        known |= {c for r in all_records if isinstance(r.mechanism, DistributedSkellam) for c in r.mechanism.participants}
        if client not in known:
            invalid("--client", client, f"one of the ledger's clients {sorted(known)}")
    if round_ is not None:
        rounds = sorted({r.round for r in all_records})
        if not rounds or not rounds[0] <= round_ <= rounds[-1]:
            invalid("--round", round_, f"a round in [{rounds[0]}, {rounds[-1]}] (the ledger's rounds)" if rounds else "a ledger with records")
    rows: list[dict[str, Any]] = []
    client_rows: dict[str, list[dict[str, Any]]] = {}
    snapshots = {}
    for method, records in loaded.items():
        snapshot = budget_snapshot(records, ledger_delta(records, delta), upto_round=round_)
        snapshots[method] = snapshot
        for budget in snapshot.parties():
            if client is None or budget.client == client:
                rows.append({"method": method, "round": snapshot.round, **budget.to_dict()})
        client_rows[method] = client_level_rows(method, snapshot, client)
    if as_json:
        typer.echo(json.dumps(rows + [r for method_rows in client_rows.values() for r in method_rows], indent=2))
    elif as_csv:
        buffer = io.StringIO()
        columns = ["method", "round", "client", "level", "rounds", "steps", "delta", "epsilon_upper",
                   "epsilon_estimate", "epsilon_lower", "accountant", "epsilon_rdp", "rdp_over_prv",
                   "epsilon_vs_server", "epsilon_vs_observers", "observers_amplified", "observers_sums"]
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + [r for method_rows in client_rows.values() for r in method_rows])
        typer.echo(buffer.getvalue(), nl=False)
    else:
        out = Console(soft_wrap=True)
        for method, snapshot in snapshots.items():
            method_rows = [r for r in rows if r["method"] == method]
            if method_rows or not client_rows[method]:
                out.print(budget_table(method, snapshot, method_rows))
                if client is None:
                    out.print(worst_line(snapshot))
            if client_rows[method]:
                out.print(client_level_table(method, snapshot, client_rows[method]))
                if client is None:
                    out.print(client_level_line(snapshot))


# --------------------------------------------------------------------------------- curve


@budget_app.command("curve")
def curve_command(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: RUN_DIR/epsilon.png)."),
    delta: Optional[float] = typer.Option(None, "--delta", help=DELTA_HELP),
) -> None:
    """Plot ε against rounds to a PNG: worst client, median, spread, RDP.

    Lines: the worst client, the median and the min-max band over clients (PRV
    upper bounds, the guarantee), the worst client's RDP bound, and the client-
    level ε of the population when the run had client-level DP.

    Examples:

      fedsim budget curve runs/demo --out eps.png

      fedsim budget curve runs/demo --delta 1e-6 --out eps-1e-6.png
    """
    from accounting import budget_history
    from cli.plots import plot_budget_curves

    check_delta(delta)
    target = out if out is not None else run_dir / "epsilon.png"
    if target.suffix.lower() != ".png":
        invalid("--out", str(target), "a path ending in .png")
    ledgers = run_ledgers(run_dir)
    histories = {}
    at = None
    for method, path in ledgers.items():
        records = load_records(path)
        at = ledger_delta(records, delta)
        histories[method] = budget_history(records, at)
    if not target.parent.is_dir():
        invalid("--out", str(target), "a file in an existing directory")
    path = plot_budget_curves(histories, target, at)
    for method, history in histories.items():
        if history:
            typer.echo(f"{method}: {worst_line(history[-1])}")
    typer.echo(f"wrote {path}")


# -------------------------------------------------------------------------------- verify


@budget_app.command("verify")
def verify_command(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    public_key: Optional[Path] = typer.Option(
        None, "--public-key", help="The run's public key (PEM), obtained apart from the run directory: pins it."
    ),
    fingerprint: Optional[list[str]] = typer.Option(
        None, "--fingerprint",
        help="SHA-256 fingerprint of the run's key (64 hex digits, printed when the run started): pins it. "
        "Repeatable: a resumed run's ledger has one segment per run that wrote it, each with its own key; "
        "give every segment's fingerprint, in order (a run of several methods: each method's in turn).",
    ),
) -> None:
    """Check the ledger's chain and signature, and every ε the run reported.

    Is the ledger the one the run wrote, and does every ε the run reported
    follow from it? Exit 0: verified; 1: verification failed; 2: bad input.

    Checks, each naming the record, line or round at fault:

      1. every line is a whole, canonical record, numbered 1, 2, 3, ... and
         chained to the one before by its SHA-256 (catches edits, deletions,
         reordering, truncation);

      2. the Ed25519 signature over the head (the last record's hash)
         verifies, and covers every record; a resumed run's ledger has one
         segment per run (each signed by its own key, each chained to the
         signed head of the one before): every segment is checked against
         its pinned fingerprint, and a missing, foreign or unpinned segment
         is named;

      3. every ε in metrics.jsonl and summary.json equals the ε recomputed
         here from the ledger alone.

    A signature proves only that the holder of the key signed. Whoever rewrites
    a ledger can replace ledger.pub with a key of their own, so pin the run's
    key with --fingerprint (or --public-key) from a copy you trust, e.g. the
    fingerprint `fedsim run` printed; without a pin, compare the fingerprint
    printed here.

    Examples:

      fedsim budget verify runs/demo

      fedsim budget verify runs/demo --fingerprint 3f2a...e1 (all 64 digits)

      fedsim budget verify runs/resumed --fingerprint 3f2a...e1 --fingerprint 9b0c...47

      fedsim budget verify runs/demo --public-key trusted/ledger.pub
    """
    from accounting import audit_ledger
    from accounting.ledger import load_public_key, normalize_fingerprint

    pinned_key = None
    if public_key is not None:
        try:
            pinned_key = load_public_key(public_key.read_bytes())
        except OSError as exc:
            invalid("--public-key", str(public_key), f"a readable file ({exc.strerror})")
        except ValueError as exc:
            invalid("--public-key", str(public_key), f"an Ed25519 public key in PEM ({exc})")
    pins = []
    for given in fingerprint or []:
        try:
            pins.append(normalize_fingerprint(given))
        except ValueError:
            invalid("--fingerprint", given, "64 hex digits: the SHA-256 of the run's public key")
    ledgers = run_ledgers(run_dir)
    out = Console(soft_wrap=True)
    failed = False
    for method, path in ledgers.items():
        try:
            audit = audit_ledger(path, public_key=pinned_key, fingerprints=ledger_pins(path, pins, len(ledgers)) if pins else None)
        except ValueError as exc:
            fail(str(exc))
        problems = [str(p) for p in audit.problems]
        out.print(f"[bold]{escape(method)}[/]: {escape(str(path))} ({len(audit.entries)} records)")
        for segment in audit.segments:
            if segment.fingerprint is None:
                continue
            pin = "pinned" if segment.pinned is not None else "NOT pinned: compare it with the fingerprint printed when the run started"
            where = f"segment {segment.segment} key" if len(audit.segments) > 1 else "key"
            out.print(f"  {where} fingerprint {segment.fingerprint} ({pin})")
        if audit.records:
            problems += compare_reported(path.parent, audit.records)
        if problems:
            failed = True
            for problem in problems:
                out.print(f"  [red]✗[/] {escape(problem)}")
        else:
            out.print(
                f"  [green]✓[/] chain of {len(audit.entries)} records intact, head signed, "
                "every reported ε recomputed from the ledger"
            )
    if failed:
        out.print("[bold red]verification failed[/]")
        raise typer.Exit(1)
    out.print("[bold green]verified[/]")


def ledger_pins(path: Path, pins: list[str], ledgers: int) -> list[str]:
    """The pins for one ledger: all of them for a run of one method; for several, the next ones in
    turn, as many as this ledger has segments (taken from ``pins``, so the next ledger gets the rest)."""
    if ledgers == 1:
        return pins
    from accounting.ledger import LedgerError, read_segments

    try:
        count = 1 + len(read_segments(path))
    except (LedgerError, OSError):
        count = 1
    taken, pins[:] = pins[:count], pins[count:]
    return taken


# ------------------------------------------------------------------------------- epsilon


HISTORY_FIELDS = ("noise_multiplier", "sample_rate", "steps")


def read_history(path: Path) -> list:
    """The ``[[mechanism]]`` tables of a TOML file as Poisson-subsampled Gaussians, or exit 2
    naming the file, the entry (1-based) and the field."""
    import tomllib

    from accounting import PoissonSubsampledGaussian

    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        invalid("--history", str(path), f"a readable TOML file ({exc.strerror})")
    except tomllib.TOMLDecodeError as exc:
        invalid("--history", str(path), f"a TOML file ({exc})")
    unknown = sorted(set(document) - {"mechanism"})
    entries = document.get("mechanism")
    if unknown or not isinstance(entries, list) or not entries:
        fail(
            f"--history={str(path)!r} is invalid: expected one or more [[mechanism]] tables "
            f"(fields {', '.join(HISTORY_FIELDS)}), got {'top-level key(s) ' + str(unknown) if unknown else repr(entries)}"
        )
    mechanisms = []
    for number, entry in enumerate(entries, start=1):
        where = f"--history={str(path)!r}: [[mechanism]] entry {number}"
        if not isinstance(entry, dict):
            fail(f"{where} is invalid: expected a table, got {entry!r}")
        name = entry.get("name", PoissonSubsampledGaussian.name)
        if name != PoissonSubsampledGaussian.name:
            fail(f"{where}: name={name!r} is invalid: expected {PoissonSubsampledGaussian.name!r} (or no name)")
        missing = [f for f in HISTORY_FIELDS if f not in entry]
        extra = sorted(set(entry) - set(HISTORY_FIELDS) - {"name"})
        if missing or extra:
            fail(f"{where} is invalid: missing field(s) {missing}, unknown field(s) {extra}; fields are {list(HISTORY_FIELDS)}")
        checks = (
            ("noise_multiplier", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0, "a number > 0"),
            ("sample_rate", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v <= 1.0, "a number in (0, 1]"),
            ("steps", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
        )
        for field, ok, expected in checks:
            if not ok(entry[field]):
                fail(f"{where}: {field}={entry[field]!r} is invalid: expected {expected}")
        mechanisms.append(PoissonSubsampledGaussian(entry["noise_multiplier"], entry["sample_rate"], entry["steps"]))
    return mechanisms


@budget_app.command("epsilon")
def epsilon_command(
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier", help="σ: noise std / L2 sensitivity, a number > 0."),
    sample_rate: Optional[float] = typer.Option(None, "--sample-rate", help="q: Poisson inclusion probability, in (0, 1] (1: no subsampling)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="T: how many times the mechanism runs, an integer >= 1."),
    history: Optional[Path] = typer.Option(
        None, "--history", help="A TOML file of [[mechanism]] tables (noise_multiplier, sample_rate, steps): their composition, instead of one mechanism."
    ),
    delta: float = typer.Option(1e-5, "--delta", help="δ at which to report ε, in (0, 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: upper, estimate, lower, rdp, method, delta, mechanism."),
) -> None:
    """ε of one mechanism, or of a mixed history, without a run (Poisson-subsampled Gaussians).

    Prints the PRV accountant's certified band (lower ≤ true ε ≤ upper, Gopi
    et al. 2021; the upper bound is what `fedsim run` reports) and the RDP bound
    beside it, so a figure can be checked against another accountant. With
    --history FILE.toml, the composition of every [[mechanism]] table in the
    file (its "mechanism" key in --json is then the list of them).

    Examples:

      fedsim budget epsilon --noise-multiplier 1 --sample-rate 0.01 --steps 10000

      fedsim budget epsilon --noise-multiplier 0.8 --sample-rate 0.0533 --steps 48 --delta 1e-6 --json

      fedsim budget epsilon --history phases.toml --json   # [[mechanism]] noise_multiplier = 1.0 ...
    """
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        invalid("--delta", delta, "a number in (0, 1), e.g. 1e-5")
    from accounting import PoissonSubsampledGaussian, PRVComposer

    if history is not None:
        given = [o for o, v in (("--noise-multiplier", noise_multiplier), ("--sample-rate", sample_rate), ("--steps", steps)) if v is not None]
        if given:
            fail(f"--history and {', '.join(given)} exclude each other: give one mechanism, or a TOML history")
        mechanisms = read_history(history)
    else:
        if noise_multiplier is None or not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            invalid("--noise-multiplier", noise_multiplier, "a number > 0 (or --history FILE.toml)")
        if sample_rate is None or not (math.isfinite(sample_rate) and 0.0 < sample_rate <= 1.0):
            invalid("--sample-rate", sample_rate, "a number in (0, 1]")
        if steps is None or steps < 1:
            invalid("--steps", steps, "an integer >= 1")
        mechanisms = [PoissonSubsampledGaussian(noise_multiplier, sample_rate, steps)]
    composer = PRVComposer()
    bound = composer.epsilon(mechanisms, delta)
    rdp = composer.rdp_epsilon(mechanisms, delta)
    described = [m.to_dict() for m in mechanisms]
    if as_json:
        typer.echo(json.dumps({
            "mechanism": described if history is not None else described[0],
            "upper": bound.upper, "estimate": bound.estimate, "lower": bound.lower, "rdp": rdp,
            "method": bound.method, "delta": delta,
        }))
        return
    what = ", then ".join(
        f"{m.steps} steps of the Poisson-subsampled Gaussian (σ={m.noise_multiplier:g}, q={m.sample_rate:g})" for m in mechanisms
    )
    Console(soft_wrap=True).print(
        f"{escape(what)} at δ={delta:g}: "
        f"ε ≤ [bold]{fmt(bound.upper)}[/] ({bound.method} upper bound), estimate {fmt(bound.estimate)}, "
        f"lower {fmt(bound.lower)}; RDP {fmt(rdp)}"
    )


# ---------------------------------------------------------------------------------- plan


@budget_app.command("plan")
def plan_command(
    target_epsilon: float = typer.Option(..., "--target-epsilon", help="Target ε, a number > 0."),
    delta: float = typer.Option(..., "--delta", help="Target δ, in (0, 1), e.g. 1e-5 (below 1/number of records)."),
    rounds: int = typer.Option(..., "--rounds", help="Communication rounds R, an integer >= 1."),
    local_steps: Optional[int] = typer.Option(None, "--local-steps", help="Sample level: DP-SGD steps K per client per round, >= 1."),
    sample_rate: Optional[float] = typer.Option(None, "--sample-rate", help="Sample level: Poisson rate q = batch size / examples of the smallest client, in (0, 1]."),
    cohort_size: Optional[int] = typer.Option(None, "--cohort-size", help="Client level: (expected) clients per round, >= 1."),
    population: Optional[int] = typer.Option(None, "--population", help="Client level: clients the cohort is drawn from, >= cohort size."),
    sampling: str = typer.Option("poisson", "--sampling", help="Client level: poisson (rate cohort/population) or fixed-size (no amplification claimed)."),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="Relative tolerance on σ, in (0, 0.1]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also draw the ε curve to this PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (σ and ε after every round)."),
) -> None:
    """The noise multiplier σ for a target (ε, δ), and the ε curve it implies.

    σ is the smallest (within --tolerance) whose PRV upper bound after all
    rounds is at most the target: ε(σ) ≤ target < ε(σ·(1 − tolerance)).
    Sample level (DP-SGD, each client's guarantee) needs --local-steps and
    --sample-rate: exactly what the run reports.

    Client level needs --cohort-size and --population and is planned on the
    continuous-Gaussian model of DP-FedAvg (as seen by observers of the
    released models, with cohort amplification): a LOWER BOUND on the noise a
    distributed-Skellam run needs, not its figure. At this σ the run reports
    more (Skellam RDP with rounded sensitivities, and no amplification against
    the server); check the run's own figures with `fedsim run --dry-run` and
    `fedsim budget show`.

    Examples:

      fedsim budget plan --target-epsilon 1 --delta 1e-5 --rounds 8 \\
          --local-steps 6 --sample-rate 0.0533

      fedsim budget plan --target-epsilon 3 --delta 1e-5 --rounds 100 \\
          --local-steps 50 --sample-rate 0.01 --out plan.png

      fedsim budget plan --target-epsilon 2 --delta 1e-6 --rounds 200 \\
          --cohort-size 50 --population 1000
    """
    from accounting import CalibrationError, Schedule, calibrate_schedule
    from accounting.calibration import CLIENT_LEVEL_CAVEAT, schedule_curve
    from cli.plots import plot_plan_curve

    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        invalid("--target-epsilon", target_epsilon, "a number > 0")
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        invalid("--delta", delta, "a number in (0, 1), e.g. 1e-5")
    if rounds < 1:
        invalid("--rounds", rounds, "an integer >= 1")
    if not (math.isfinite(tolerance) and 0.0 < tolerance <= 0.1):
        invalid("--tolerance", tolerance, "a number in (0, 0.1]")
    sampling_value = {"poisson": "poisson", "fixed-size": "fixed_size"}.get(sampling)
    if sampling_value is None:
        invalid("--sampling", sampling, "poisson or fixed-size")
    client_level = cohort_size is not None or population is not None
    if client_level:
        if local_steps is not None or sample_rate is not None:
            fail("--local-steps/--sample-rate (sample level) and --cohort-size/--population (client level) exclude each other")
        if cohort_size is None or cohort_size < 1:
            invalid("--cohort-size", cohort_size, "an integer >= 1 (with --population)")
        if population is None or population < cohort_size:
            invalid("--population", population, f"an integer >= --cohort-size ({cohort_size})")
        schedule = Schedule(rounds, cohort_size=cohort_size, population=population, sampling=sampling_value)
    else:
        if local_steps is None or local_steps < 1:
            invalid("--local-steps", local_steps, "an integer >= 1 (or --cohort-size and --population for client level)")
        if sample_rate is None or not (math.isfinite(sample_rate) and 0.0 < sample_rate <= 1.0):
            invalid("--sample-rate", sample_rate, "a number in (0, 1]")
        schedule = Schedule(rounds, local_steps=local_steps, sample_rate=sample_rate)
    if out is not None and (out.suffix.lower() != ".png" or not out.parent.is_dir()):
        invalid("--out", str(out), "a .png path in an existing directory")
    from accounting import PRVComposer

    composer = PRVComposer()
    try:
        calibration = calibrate_schedule(schedule, target_epsilon, delta, tolerance=tolerance, composer=composer)
    except CalibrationError as exc:
        fail(f"--target-epsilon={target_epsilon!r}: {exc}")
    curve = schedule_curve(schedule, calibration.noise_multiplier, delta, composer=composer)
    if as_json:
        typer.echo(json.dumps({
            "schedule": schedule.describe(),
            **({"caveat": CLIENT_LEVEL_CAVEAT} if schedule.client_level else {}),
            **calibration.to_dict(),
            "curve": [{"round": p.round, "steps": p.steps, **p.prv.to_dict(), "epsilon_rdp": p.rdp} for p in curve],
        }, indent=2))
    else:
        out_console = Console(soft_wrap=True)
        bound = calibration.epsilon
        out_console.print(f"schedule: {escape(schedule.describe())}, target ε={target_epsilon:g} at δ={delta:g}")
        out_console.print(
            f"[bold]noise multiplier σ = {calibration.noise_multiplier:.6g}[/] (tolerance {tolerance:g}: "
            f"σ·(1−{tolerance:g}) would exceed the target)"
        )
        out_console.print(
            f"ε after {rounds} rounds: ≤ {fmt(bound.upper)} (upper bound, {bound.method}), estimate {fmt(bound.estimate)}, "
            f"lower {fmt(bound.lower)}; RDP {fmt(calibration.rdp_epsilon)} "
            f"({calibration.rdp_epsilon / bound.upper:.3f}x)"
        )
        out_console.print(plan_table(curve))
        if schedule.client_level:
            out_console.print(f"[bold yellow]note:[/] {escape(CLIENT_LEVEL_CAVEAT)}")
    if out is not None:
        typer.echo(f"wrote {plot_plan_curve(curve, out, calibration, schedule.describe())}")
