"""``fedsim budget ...``: auditors' queries on a run's ledger (every ε recomputed from it alone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedsim.rundir import LEDGER_FILE, find_ledgers

budget_app = typer.Typer(
    help="Privacy budgets of a finished or running job, recomputed from its ledger alone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@budget_app.command("show")
def show_command(
    run_dir: Path = typer.Argument(..., help="A run directory written by `fedsim run`."),
    delta: Optional[float] = typer.Option(None, help="δ at which to report ε (default: the δ recorded in the ledger)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Recompute each client's ε (PRV: lower, estimate, upper) from the run's ledger alone.

    Nothing from the run is trusted but the ledger's mechanism records: the composition is
    redone here, so the figures can be checked against what `fedsim run` printed.
    """
    from accounting import LedgerError, client_epsilons, client_mechanisms, read_ledger

    err = Console(stderr=True)
    if not run_dir.is_dir():
        err.print(f"[bold red]error:[/] run_dir={str(run_dir)!r} is invalid: expected an existing run directory")
        raise typer.Exit(2)
    ledgers = find_ledgers(run_dir)
    if not ledgers:
        err.print(f"[bold red]error:[/] run_dir={str(run_dir)!r} holds no {LEDGER_FILE}")
        raise typer.Exit(2)
    if delta is not None and not 0 < delta < 1:
        err.print(f"[bold red]error:[/] delta={delta!r} is invalid: expected a number in (0, 1)")
        raise typer.Exit(2)
    rows = []
    for method, path in ledgers.items():
        try:
            records = read_ledger(path)
        except LedgerError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1)
        at = delta if delta is not None else (records[0].delta if records else 1e-5)
        histories = client_mechanisms(records)
        for client, bound in sorted(client_epsilons(records, at).items()):
            rows.append(
                {
                    "method": method,
                    "client": client,
                    "rounds": len({r.round for r in records if r.client == client}),
                    "steps": sum(m.steps for m in histories[client]),
                    "delta": at,
                    "epsilon_lower": bound.lower,
                    "epsilon_estimate": bound.estimate,
                    "epsilon_upper": bound.upper,
                    "accountant": bound.method,
                }
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"privacy budget: {run_dir}")
    for column in ("method", "client", "rounds", "steps", "δ", "ε lower", "ε estimate", "ε upper (guarantee)", "accountant"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["method"], str(r["client"]), str(r["rounds"]), str(r["steps"]), f"{r['delta']:g}",
            f"{r['epsilon_lower']:.4f}", f"{r['epsilon_estimate']:.4f}", f"{r['epsilon_upper']:.4f}", r["accountant"],
        )
    Console().print(table)
