"""``fedsim attack SCENARIO|all``: named adversaries against the real secure-aggregation layer.

One row per scenario and threat model: the verdict (HOLDS / BROKEN, computed from what
happened), the figure behind it and a one-line explanation; ``--json`` prints the rows
with the documented ``expected`` verdict beside each. The scenarios, their summaries and
expected verdicts come from :mod:`fedsim.attacks.registry` (the same table the tests and
the README use). Exit codes: 0 every verdict equals its expectation, 1 one does not (or a
scenario could not run: verdict ERROR), 2 bad input.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.render import err, invalid
from fedsim.attacks.registry import (
    BROKEN,
    ERROR,
    HOLDS,
    SCENARIOS,
    THREAT_MODELS,
    AttackResult,
    run_scenario,
    scenario,
    scenario_names,
)

BOTH = "both"
ALL = "all"
_QUIET_LOGGERS = ("secagg", "fedsim")


def _scenario_paragraphs() -> str:
    lines = []
    for s in SCENARIOS:
        expected = " / ".join(s.expected_under(model) for model in THREAT_MODELS)
        extra = " Has a --processes variant." if s.transport else ""
        lines.append(f"{s.name} (expected {expected}): {s.summary}.{extra}")
    return "\n\n".join(lines)


def _help_text() -> str:
    paragraphs = [
        "Attack the secure-aggregation layer with named adversaries; one verdict per scenario and threat model.",
        (
            "Every scenario drives the real classes (secagg's ServerRound and ClientRound, the fixed-point codec "
            "and its range check, the relay), in memory unless --processes, and computes its verdict from what "
            "happened: HOLDS when the defence stopped the attack (where it applies, the round still completed "
            "with the right sum and the attacker, not an honest client, was named); BROKEN when the attacker got "
            "what it wanted (a victim's input reconstructed, a wrong sum released unnoticed, the server process "
            "killed). The figure column is the measurement behind the verdict; --json adds the documented "
            "expected verdict per row."
        ),
        (
            "BROKEN under semi-honest is by design for dropout-lie and key-substitution: that threat model trusts "
            "the server to follow the protocol (no PKI, no signed ConsistencyCheck). Where the server is not "
            "trusted, run with `fedsim run --secagg-threat-model active`. BROKEN under active is by design for "
            "false-accusation: there an accusation of bad shares carries no key the server could check (the "
            "server may be the attacker), so the accused client loses its round (availability, not privacy)."
        ),
        f"Scenarios (expected verdict under {' / '.join(THREAT_MODELS)}):",
        _scenario_paragraphs(),
        (
            "Exit codes: 0 when every verdict equals the documented expectation for its threat model; 1 when one "
            "differs, or a scenario could not run (verdict ERROR); 2 on bad input."
        ),
        "Examples:",
        "  fedsim attack all",
        "  fedsim attack dropout-lie --threat-model active",
        "  fedsim attack oversize-message --processes --json",
    ]
    return "\n\n".join(paragraphs)


@contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """The scenarios make clients refuse on purpose: keep their warnings off the screen."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    if enabled:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_inputs(name: str, threat_model: str, clients: Optional[int]) -> tuple[list[str], list[str]]:
    """The scenarios and threat models to run, or exit 2 naming the option and the allowed values."""
    names = list(scenario_names())
    if name != ALL and name not in names:
        invalid("SCENARIO", name, f"'{ALL}' or one of: {', '.join(names)}")
    models = list(THREAT_MODELS) if threat_model == BOTH else [threat_model]
    if threat_model != BOTH and threat_model not in THREAT_MODELS:
        invalid("--threat-model", threat_model, f"one of: {', '.join(THREAT_MODELS)}, {BOTH}")
    chosen = names if name == ALL else [name]
    if clients is not None:
        for n in chosen:
            spec = scenario(n)
            if not spec.min_clients <= clients <= spec.max_clients:
                invalid("--clients", clients, f"an int in [{spec.min_clients}, {spec.max_clients}] for {n}")
    return chosen, models


def _run_one(name: str, model: str, clients: Optional[int], processes: bool, debug: bool) -> AttackResult:
    try:
        return run_scenario(name, model, clients=clients, processes=processes)
    except Exception as exc:  # noqa: BLE001 - one scenario's failure is a row, not the end of the run
        if debug:
            err.print(escape("".join(traceback.format_exception(exc))), end="")
        hint = "" if debug else " (run `fedsim --debug attack ...` for the traceback)"
        return AttackResult(name, model, ERROR, f"{type(exc).__name__}: {exc}", f"the scenario itself failed{hint}")


def _table(rows: list[dict]) -> Table:
    table = Table(title="fedsim attack: verdicts", title_justify="left", box=box.SIMPLE_HEAD, show_lines=False)
    table.add_column("scenario", no_wrap=True)
    table.add_column("threat model", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("figure", overflow="fold", ratio=3)
    table.add_column("explanation", overflow="fold", ratio=4)
    colours = {HOLDS: "green", BROKEN: "red", ERROR: "magenta"}
    for row in rows:
        verdict = f"[{colours[row['verdict']]}]{row['verdict']}[/]"
        if row["verdict"] != row["expected"]:
            verdict += f" [bold yellow](expected {row['expected']})[/]"
        table.add_row(
            escape(row["scenario"]), escape(row["threat_model"]), verdict, escape(row["figure"]), escape(row["explanation"])
        )
    return table


def attack_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="SCENARIO|all", help=f"A scenario ({', '.join(scenario_names())}) or '{ALL}'."),
    threat_model: str = typer.Option(
        BOTH, "--threat-model",
        help=f"The threat model(s) to attack: {', '.join(THREAT_MODELS)}, or {BOTH} (one row each).",
    ),
    clients: Optional[int] = typer.Option(
        None, "--clients",
        help="Cohort size (default 7; partial-sum 100, graph only; for oversize-message the number of honest client processes, default 2).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of rows (with the expected verdict) instead of a table."),
    processes: bool = typer.Option(
        False, "--processes",
        help="Run the transport scenario (oversize-message) over real torch.distributed processes; the others stay in memory.",
    ),
) -> None:
    debug = bool(ctx.find_root().params.get("debug"))
    chosen, models = _check_inputs(name, threat_model, clients)
    rows = []
    with _quiet(not debug):
        for n in chosen:
            for model in models:
                if not as_json and err.is_terminal:
                    err.print(f"[dim]attacking: {n} under {model}…[/]")
                result = _run_one(n, model, clients, processes, debug)
                row = result.to_dict()
                row["processes"] = bool(processes and scenario(n).transport)
                rows.append(row)
    matched = sum(row["verdict"] == row["expected"] for row in rows)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        Console(soft_wrap=False).print(_table(rows))
        typer.echo(f"{matched} of {len(rows)} verdicts match the documented expectation")
    if matched != len(rows):
        raise typer.Exit(1)


attack_command.__doc__ = _help_text()
