"""The closing table of ``fedsim run`` in a non-TTY log (cli.render.summary_table).

Rendered the way ``fedsim run`` prints it (stderr's console: not a terminal, 80 columns,
soft wrap) into a string: no header or cell is cut with "…", no line is longer than the
console, and every figure of every method is there in full. The attacks: values as long as
a run can make them (ε in the thousands, hours of wall time, both client-level figures),
a console narrower than the compact table, and values too long for any table at 80 columns.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli.render import SUMMARY_COLUMNS, client_level_cell, legend_lines, summary_table
from fedsim.events import MethodSummary

DELTA = 1e-5


def summary(method: str = "la-lora", **changes) -> MethodSummary:
    values = dict(
        method=method, rounds=8, initial_accuracy=0.077, accuracy=0.803, loss=1.234, epsilon=2.81,
        epsilon_method="prv", epsilon_rdp=3.305, client_level_epsilon=None, delta=DELTA, run_dir="runs/x",
        ledger_fingerprint="ab" * 8, seconds=87.6,
    )
    values.update(changes)
    return MethodSummary(**values)


def long_summaries() -> list[MethodSummary]:
    """The widest values a real run gives: three methods, 101 rounds, both client-level ε, hours."""
    return [
        summary("la-lora", rounds=101, epsilon=1234.567, epsilon_rdp=2345.678, loss=12.345, seconds=36_000.4,
                client_level_epsilon=99.123, client_level_epsilon_server=99.123, client_level_epsilon_observers=45.678),
        summary("dp-lora", rounds=101, epsilon_method="pld", seconds=36_000.0),
        summary("ffa-lora", rounds=101, epsilon_method="rdp", epsilon=float("inf"), epsilon_rdp=float("inf")),
    ]


def render(summaries, width: int, soft_wrap: bool = True) -> str:
    """What a log file shows: a non-terminal console of ``width`` columns."""
    console = Console(file=io.StringIO(), width=width, soft_wrap=soft_wrap, record=True, force_terminal=False,
                      color_system=None)
    console.print(summary_table(summaries, DELTA))
    return console.export_text()


def assert_readable(text: str, width: int) -> None:
    assert "…" not in text, text
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long


def assert_every_cell_shown(text: str, summaries) -> None:
    for s in summaries:
        for column in SUMMARY_COLUMNS:
            assert column.cell(s) in text, (column.header, column.cell(s), text)


@pytest.mark.parametrize("soft_wrap", [True, False])
@pytest.mark.parametrize("make", [lambda: [summary()], long_summaries], ids=["default job", "longest values"])
def test_80_columns_show_short_headers_with_their_legend(make, soft_wrap: bool) -> None:
    summaries = make()
    text = render(summaries, 80, soft_wrap)
    assert_readable(text, 80)
    assert_every_cell_shown(text, summaries)
    header = next(line for line in text.splitlines() if line.startswith("method"))
    assert header.split() == ["method", "rounds", "acc0", "acc", "loss", "ε", "acct", "ε", "RDP", "ε", "client", "time"]
    for column in SUMMARY_COLUMNS:  # every short header the legend must explain is explained
        if column.header not in ("method", "rounds"):
            assert column.legend.startswith(column.header + " ") and column.legend in text, column.legend
    assert f"δ={DELTA:g}" in text


def test_the_client_level_column_shows_server_over_observers() -> None:
    text = render(long_summaries(), 80)
    assert "99.123/45.678" in text
    assert "vs server/vs observers" in text
    assert client_level_cell(summary()) == "–"
    assert client_level_cell(summary(client_level_epsilon_server=1.5)) == "1.500"


@pytest.mark.parametrize("width", [40, 60])
def test_a_console_narrower_than_the_table_gets_one_block_per_method(width: int) -> None:
    summaries = long_summaries()
    text = render(summaries, width)
    assert_readable(text, width)
    assert_every_cell_shown(text, summaries)
    assert not any(line.startswith("method ") for line in text.splitlines())  # no compact header row
    for column in SUMMARY_COLUMNS[1:]:
        assert text.count(column.label) == len(summaries), column.label


def test_values_too_long_for_any_table_switch_to_blocks_at_80_columns() -> None:
    huge = [summary(epsilon=1e15, epsilon_rdp=3e15, seconds=1e12,
                    client_level_epsilon_server=1e15, client_level_epsilon_observers=1e15)]
    text = render(huge, 80)
    assert_readable(text, 80)
    assert_every_cell_shown(text, huge)
    assert "ε (upper bound)" in text


def test_a_wide_terminal_keeps_one_table() -> None:
    text = render(long_summaries(), 160)
    assert sum(line.startswith("method") for line in text.splitlines()) == 1
    assert_readable(text, 160)


@pytest.mark.parametrize("width", [1, 20, 47, 80])
def test_legend_lines_pack_whole_entries_within_the_width(width: int) -> None:
    entries = [c.legend for c in SUMMARY_COLUMNS if c.legend]
    lines = legend_lines(entries, width)
    assert " · ".join(lines).replace("\n", "") == " · ".join(entries)  # order kept, nothing lost
    assert [e for line in lines for e in line.split(" · ")] == entries  # no entry split across lines
    for line in lines:
        assert len(line) <= width or " · " not in line  # only a lone entry longer than the width may exceed it
