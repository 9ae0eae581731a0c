"""What the CLI shows: progress, tables, warnings and errors (the library never prints).

Errors go to stderr as one ``error: …`` line; :func:`report_error` turns any exception a
command raised into that line and an exit code (a :class:`~fedsim.errors.FedsimError` says
its own: 2 bad input, 1 the run failed; anything else is an internal error, 1), with the
traceback only under ``fedsim --debug``.
"""

from __future__ import annotations

import math
import textwrap
import traceback
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Optional, Sequence

import typer
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedsim.errors import BAD_INPUT, RUN_FAILED, FedsimError

err = Console(stderr=True, soft_wrap=True)
"""stderr: progress, warnings, errors (stdout keeps what a script reads: tables, JSON)."""


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    """Print ``error: message`` (markup escaped) on stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def invalid(option: str, value: Any, expected: str) -> NoReturn:
    """Exit 2 naming the option, the value and what is expected."""
    fail(f"{option}={value!r} is invalid: expected {expected}")


def report_error(exc: BaseException, debug: bool) -> int:
    """Show an exception a command raised; the exit code it means."""
    if debug:
        err.print(escape("".join(traceback.format_exception(exc))), end="")
    if isinstance(exc, FedsimError):
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        return exc.exit_code
    hint = "" if debug else " (run `fedsim --debug ...` for the traceback)"
    err.print(f"[bold red]error:[/] internal error: {escape(type(exc).__name__)}: {escape(str(exc))}{hint}")
    return RUN_FAILED


# ------------------------------------------------------------------------------ fedsim run


class ProgressObserver:
    """Renders one progress bar per method and a line per evaluated round."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def method_started(self, method: str, rounds: int, ledger_fingerprint: str, completed: int = 0) -> None:
        self.progress.console.print(
            f"{method}: ledger key fingerprint {ledger_fingerprint} "
            f"(pin it: fedsim budget verify RUN_DIR --fingerprint {ledger_fingerprint})"
        )
        self.tasks[method] = self.progress.add_task(f"{method}", total=rounds, completed=completed, status="")

    def round_finished(self, metrics) -> None:
        status = f"ε={metrics.epsilon:.3f}"
        if metrics.accuracy is not None:
            status = f"acc={metrics.accuracy:.3f} loss={metrics.loss:.3f} " + status
        self.progress.update(self.tasks[metrics.method], advance=1, status=status)

    def method_finished(self, summary) -> None:
        self.progress.update(self.tasks[summary.method], status=f"acc={summary.accuracy:.3f} ε={summary.epsilon:.3f} done")


def make_progress(enabled: bool) -> Progress:
    """A rich progress display on stderr (disabled on non-server ranks)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
        disable=not enabled,
    )


@dataclass(frozen=True)
class SummaryColumn:
    """One column of the closing table: its short header, what the legend says it is, its
    full name (the vertical layout's label), and the cell of one method's summary."""

    header: str
    legend: str
    label: str
    cell: Callable[[Any], str]


SUMMARY_COLUMNS: tuple[SummaryColumn, ...] = (
    SummaryColumn("method", "", "method", lambda s: s.method),
    SummaryColumn("rounds", "", "rounds", lambda s: str(s.rounds)),
    SummaryColumn("acc0", "acc0 untrained accuracy", "untrained accuracy", lambda s: f"{s.initial_accuracy:.3f}"),
    SummaryColumn("acc", "acc final accuracy", "final accuracy", lambda s: f"{s.accuracy:.3f}"),
    SummaryColumn("loss", "loss final test loss", "final loss", lambda s: f"{s.loss:.3f}"),
    SummaryColumn("ε", "ε worst client's ε, upper bound (the guarantee)", "ε (upper bound)", lambda s: f"{s.epsilon:.3f}"),
    SummaryColumn("acct", "acct its accountant (prv, pld or rdp)", "accountant", lambda s: s.epsilon_method),
    SummaryColumn("ε RDP", "ε RDP the same from Rényi DP", "ε RDP", lambda s: f"{s.epsilon_rdp:.3f}"),
    SummaryColumn(
        "ε client",
        "ε client client-level ε vs server/vs observers (– none)",
        "client-level ε server/observers",
        lambda s: client_level_cell(s),
    ),
    SummaryColumn("time", "time wall time", "time", lambda s: f"{s.seconds:.0f}s"),
)


def summary_title(delta: float) -> str:
    return f"fedsim: accuracy and privacy (ε upper bound at δ={delta:g})"


class SummaryTable:
    """The closing table: accuracy, loss, ε (upper, the guarantee) at δ, per method.

    Rendered to fit the console (a non-TTY log is 80 columns): short headers and a legend
    when the table fits, else one block per method with the full names. No cell is ever
    cut ("…"): the layout changes instead.
    """

    def __init__(self, summaries: Sequence[Any], delta: float) -> None:
        self.summaries, self.delta = list(summaries), delta

    def table(self) -> Table:
        """The compact table (short headers, explained by the legend :func:`legend_lines` packs)."""
        table = Table(title=summary_title(self.delta), box=box.SIMPLE_HEAD, show_edge=False, padding=0)
        for column in SUMMARY_COLUMNS:
            table.add_column(column.header, justify="left" if column.header == "method" else "right", no_wrap=True)
        for s in self.summaries:
            table.add_row(*(column.cell(s) for column in SUMMARY_COLUMNS))
        return table

    def vertical(self, width: int) -> list[str]:
        """One block per method: full column names, one value a line (the value under its
        name when the two do not fit in ``width``)."""
        labels = [column.label for column in SUMMARY_COLUMNS[1:]]
        pad = max(map(len, labels))
        lines = []
        for s in self.summaries:
            lines.append(s.method)
            for column in SUMMARY_COLUMNS[1:]:
                line = f"  {column.label:<{pad}} {column.cell(s)}"
                lines += [line] if len(line) <= width else [f"  {column.label}", f"    {column.cell(s)}"]
        return lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table()
        natural = Measurement.get(console, options.update_width(10_000), table).maximum
        if natural > options.max_width:
            for line in textwrap.wrap(summary_title(self.delta), options.max_width):
                yield Text(line, style="italic", no_wrap=True)
            for line in self.vertical(options.max_width):
                yield Text(line, style="bold" if not line.startswith(" ") else "", no_wrap=True)
            return
        yield table
        for line in legend_lines([c.legend for c in SUMMARY_COLUMNS if c.legend], options.max_width):
            yield Text(line, style="dim", no_wrap=True)


def legend_lines(entries: Sequence[str], width: int) -> list[str]:
    """The entries joined by " · " into lines of at most ``width`` characters (an entry is never split)."""
    lines: list[str] = []
    for entry in entries:
        if lines and len(lines[-1]) + 3 + len(entry) <= width:
            lines[-1] += " · " + entry
        else:
            lines.append(entry)
    return lines


def summary_table(summaries: Sequence[Any], delta: float) -> SummaryTable:
    """The closing table (:class:`SummaryTable`), laid out for the console it is printed on."""
    return SummaryTable(summaries, delta)


def client_level_cell(summary) -> str:
    """The worst client's client-level ε against the server / against observers of the models ("–" without)."""
    server, observers = summary.client_level_epsilon_server, summary.client_level_epsilon_observers
    if server is None:
        return "–"
    return f"{server:.3f}/{observers:.3f}" if observers is not None else f"{server:.3f}"


def warn_about_faults(summaries) -> None:
    """Name the client processes dropped during the run and count aborted rounds."""
    dropped = summaries[-1].dropped_processes if summaries else {}
    for rank, reason in sorted(dropped.items()):
        err.print(f"[bold yellow]warning:[/] client process rank {rank} was dropped: {escape(reason)}")
    for s in summaries:
        if s.aborted_rounds:
            err.print(
                f"[bold yellow]warning:[/] {s.method}: {s.aborted_rounds} of {s.rounds} rounds aborted "
                f"(global model unchanged; see aborted/abort_reason in {escape(s.run_dir)}/metrics.jsonl)"
            )


# --------------------------------------------------------------------------- fedsim budget


def client_label(client: Optional[int]) -> str:
    return "all (client-level)" if client is None else str(client)


def fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def budget_table(method: str, snapshot, rows: Sequence[dict[str, Any]]) -> Table:
    """One method's budgets as a rich table."""
    title = f"{escape(method)}: ε at δ={snapshot.delta:g} after round {snapshot.round} (ε upper is the guarantee)"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in ("client", "rounds", "steps", "ε upper", "estimate", "lower", "method", "RDP ε", "RDP/PRV"):
        table.add_column(column, justify="left" if column in ("client", "method") else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            client_label(r["client"]), str(r["rounds"]), str(r["steps"]), fmt(r["epsilon_upper"]),
            fmt(r["epsilon_estimate"]), fmt(r["epsilon_lower"]), r["accountant"], fmt(r["epsilon_rdp"]),
            f"{r['rdp_over_prv']:.3f}x",
        )
    return table


def worst_line(snapshot) -> str:
    """The worst client and the quantiles of ε over clients, in one line."""
    worst = snapshot.worst()
    if worst is None:
        return "no sample-level records"
    q = snapshot.quantiles()
    return (
        f"worst client {worst.client}: ε ≤ {fmt(worst.prv.upper)} ({worst.prv.method}), RDP {fmt(worst.rdp)} "
        f"({worst.rdp_over_prv:.3f}x)   ε upper over {len(snapshot.clients)} clients: "
        f"min {fmt(q[0.0])} · median {fmt(q[0.5])} · p90 {fmt(q[0.9])} · max {fmt(q[1.0])}"
    )


#: How `fedsim budget` names the adversary of each client-level figure.
VS_SERVER = "client-level ε vs server"
VS_OBSERVERS = "vs observers of released models"


def client_level_rows(method: str, snapshot, client: Optional[int] = None) -> list[dict[str, Any]]:
    """One row per client with both distributed-Skellam client-level figures, the adversary in the key."""
    server = snapshot.client_level_budgets("server")
    observers = snapshot.client_level_budgets("observers")
    rows = []
    for cid in sorted(server):
        if client is not None and cid != client:
            continue
        s, o = server[cid], observers[cid]
        rows.append({
            "method": method, "round": snapshot.round, "client": cid, "level": "client", "rounds": s.rounds,
            "steps": s.sums, "delta": s.delta, "accountant": s.method, "epsilon_vs_server": s.epsilon,
            "epsilon_vs_observers": o.epsilon, "observers_amplified": o.amplified, "observers_sums": o.sums,
        })
    return rows


def client_level_table(method: str, snapshot, rows: Sequence[dict[str, Any]]) -> Table:
    """One method's client-level (distributed Skellam) figures, each column naming its adversary."""
    title = (
        f"{escape(method)}: client-level ε at δ={snapshot.delta:g} after round {snapshot.round} "
        "(distributed Skellam, RDP), by adversary"
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    headers = ("client", "rounds", "sums", VS_SERVER.replace(" vs ", "\nvs "), VS_OBSERVERS.replace(" of ", " of\n"), "amplified")
    for column in headers:
        table.add_column(column, justify="left" if column == "client" else "right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r["client"]), str(r["rounds"]), str(r["steps"]), fmt(r["epsilon_vs_server"]),
            fmt(r["epsilon_vs_observers"]), "yes" if r["observers_amplified"] else "no",
        )
    return table


def client_level_line(snapshot) -> str:
    """The worst client against each adversary, and whom each figure holds against."""
    server = snapshot.worst_client_level("server")
    observers = snapshot.worst_client_level("observers")
    if server is None:
        return "no client-level (distributed Skellam) records"
    return (
        f"{VS_SERVER} (it picks the cohort and sees who took part: no cohort amplification): worst client "
        f"{server.client} ε ≤ {fmt(server.epsilon)} over its {server.sums} sums; {VS_OBSERVERS} (amplified by "
        f"Poisson cohorts, none claimed for fixed-size ones; never above the server figure): worst client "
        f"{observers.client} ε ≤ {fmt(observers.epsilon)}"
    )


def plan_table(curve: Sequence) -> Table:
    """A planned schedule's ε after each round (about ten rows, first and last always)."""
    table = Table(title="ε after each round (PRV upper bound)", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for column in ("round", "steps", "ε upper", "ε estimate", "ε RDP"):
        table.add_column(column, justify="right")
    stride = max(1, math.ceil(len(curve) / 10))
    for point in curve:
        if point.round % stride == 0 or point.round in (1, len(curve)):
            table.add_row(str(point.round), str(point.steps), fmt(point.prv.upper), fmt(point.prv.estimate), fmt(point.rdp))
    return table
