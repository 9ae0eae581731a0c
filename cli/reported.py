"""The figures a run reported beside its ledger, checked against the ledger alone.

``fedsim budget verify`` recomputes every ε from the ledger's records and compares it with
what ``metrics.jsonl`` and ``summary.json`` say; each difference is one problem line naming
the file, the line or round, the reported and the recomputed figure.

Keys checked (each where present; the client-level ones of :data:`CLIENT_LEVEL_KEYS` must be
in summary.json when the ledger holds distributed-Skellam records):

* ``epsilon``, ``epsilon_rdp``, ``delta``: the worst client's sample-level figures;
* ``client_level_epsilon_server``: the largest client-level ε against the server over the
  clients (distributed Skellam, no cohort amplification);
* ``client_level_epsilon_observers``: the largest client-level ε against observers of the
  released models (amplified by Poisson cohorts, never above the server figure);
* ``client_level_epsilon``: the population's ε of old ClientLevelGaussian ledgers; with
  Skellam records, the server figure (the conservative one, for readers that know one key).
  ``None`` when the ledger holds no client-level record.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from cli.render import client_label
from fedsim.rundir import (
    FORMAT_VERSION_FIELD,
    LEDGER_FILE,
    METRICS_FILE,
    METRICS_FORMAT_VERSION,
    SUMMARY_FILE,
    SUMMARY_FORMAT_VERSION,
    readable_format,
)

#: Relative tolerance when comparing a reported ε with the recomputed one: the two are
#: computed by the same deterministic code, so they agree to the last bit on one machine.
REPORT_RTOL = 1e-9

#: summary.json / metrics.jsonl keys of the distributed-Skellam client-level figures, by adversary.
CLIENT_LEVEL_KEYS = {"client_level_epsilon_server": "server", "client_level_epsilon_observers": "observers"}
LEGACY_CLIENT_LEVEL_KEY = "client_level_epsilon"
ADVERSARY_NAMES = {"server": "against the server", "observers": "against observers of released models"}


def compare_reported(folder: Path, records: Sequence) -> list[str]:
    """Differences between the ε the run reported beside the ledger and the ledger's own."""
    from accounting import budget_history

    deltas = sorted({r.delta for r in records})
    if len(deltas) > 1:
        return [f"{LEDGER_FILE}: records carry different δ {deltas}; a run has one target δ"]
    back = next((i for i in range(1, len(records)) if records[i].round < records[i - 1].round), None)
    if back is not None:  # the audit names the line; composing would mean guessing the order
        return [
            f"{LEDGER_FILE}: the reported ε cannot be recomputed: readable record {back + 1} (round "
            f"{records[back].round}) comes after one of round {records[back - 1].round}"
        ]
    history = {s.round: s for s in budget_history(records, deltas[0])}
    problems = []
    metrics_path = folder / METRICS_FILE
    reported_rounds = set()
    if metrics_path.is_file():
        for number, line in enumerate(metrics_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{METRICS_FILE} line {number}"
            try:
                row = json.loads(line)
                missing = {"round", "epsilon"} - set(row)
                if missing:
                    raise KeyError(f"missing {sorted(missing)}")
                check_format_version(row, METRICS_FORMAT_VERSION)
                round_ = row["round"]
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{where}: unreadable ({exc})")
                continue
            reported_rounds.add(round_)
            # A round in which no client reported adds no record: the budgets stand as before it.
            earlier = [r for r in history if isinstance(round_, int) and r <= round_]
            if not earlier:
                if row.get("epsilon") != 0.0:
                    problems.append(f"{where}: round {round_} reports epsilon={row.get('epsilon')!r} before any ledger record")
                continue
            problems += compare_figures(where, f"round {round_}", row, history[max(earlier)])
        for round_ in sorted(set(history) - reported_rounds):
            problems.append(f"{METRICS_FILE}: no row for round {round_}, which the ledger holds")
    else:
        problems.append(f"{METRICS_FILE} is missing beside the ledger: the run's figures cannot be checked")
    summary_path = folder / SUMMARY_FILE
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            check_format_version(summary, SUMMARY_FORMAT_VERSION)
            final = history[max(history)]
            problems += compare_figures(SUMMARY_FILE, f"final round {final.round}", summary, final)
            problems += missing_client_level(SUMMARY_FILE, summary, final)
            worst = final.worst()
            if worst is not None and summary.get("epsilon_method", worst.prv.method) != worst.prv.method:
                problems.append(
                    f"{SUMMARY_FILE}: epsilon_method={summary['epsilon_method']!r}, "
                    f"but the ledger's figure comes from {worst.prv.method!r}"
                )
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{SUMMARY_FILE}: unreadable ({exc})")
    return problems


def compare_figures(where: str, what: str, reported: dict, snapshot) -> list[str]:
    """The sample-level figures (worst client's ``epsilon``, ``epsilon_rdp``), ``delta`` and the client-level ones."""
    worst = snapshot.worst() or snapshot.population
    problems = []
    has_figures = worst is not None or bool(expected_client_level(snapshot))
    if has_figures and "delta" in reported and reported["delta"] != snapshot.delta:
        problems.append(f"{where} ({what}): reported δ={reported['delta']!r}, the ledger's δ is {snapshot.delta!r}")
    if worst is not None:
        for key, recomputed in (("epsilon", worst.prv.upper), ("epsilon_rdp", worst.rdp)):
            if key in reported:
                problems += compare_value(where, what, key, reported[key], recomputed, f"client {client_label(worst.client)}", snapshot.delta)
    return problems + compare_client_level(where, what, reported, snapshot)


def compare_value(where: str, what: str, key: str, value, recomputed: float, whose: str, delta: float) -> list[str]:
    """One problem line if ``value`` is not ``recomputed`` (to :data:`REPORT_RTOL`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isclose(value, recomputed, rel_tol=REPORT_RTOL, abs_tol=1e-12):
        return [f"{where} ({what}): reported {key}={value!r}, but the ledger gives {recomputed!r} ({whose}, δ={delta:g})"]
    return []


def expected_client_level(snapshot) -> dict[str, tuple[float, str]]:
    """The client-level keys the ledger implies: key -> (figure, whose it is)."""
    expected = {}
    for key, against in CLIENT_LEVEL_KEYS.items():
        worst = snapshot.worst_client_level(against)
        if worst is not None:
            expected[key] = (worst.epsilon, f"client {worst.client}, {ADVERSARY_NAMES[against]}")
    if snapshot.population is not None:
        expected[LEGACY_CLIENT_LEVEL_KEY] = (snapshot.population.prv.upper, "the population, client level")
    elif "client_level_epsilon_server" in expected:
        expected[LEGACY_CLIENT_LEVEL_KEY] = expected["client_level_epsilon_server"]
    return expected


def compare_client_level(where: str, what: str, reported: dict, snapshot) -> list[str]:
    """Each client-level key the run reported against the figure the ledger gives (None: no such record)."""
    expected = expected_client_level(snapshot)
    problems = []
    for key in (*CLIENT_LEVEL_KEYS, LEGACY_CLIENT_LEVEL_KEY):
        if key not in reported:
            continue
        if key not in expected:
            if reported[key] is not None:
                problems.append(f"{where} ({what}): reported {key}={reported[key]!r}, but the ledger holds no record it could come from")
            continue
        recomputed, whose = expected[key]
        problems += compare_value(where, what, key, reported[key], recomputed, whose, snapshot.delta)
    return problems


def missing_client_level(where: str, reported: dict, snapshot) -> list[str]:
    """The distributed-Skellam keys a summary must carry when the ledger holds such records."""
    expected = expected_client_level(snapshot)
    return [
        f"{where}: does not report {key}, which the ledger's distributed_skellam records give ({expected[key][1]})"
        for key in CLIENT_LEVEL_KEYS
        if key in expected and key not in reported
    ]


def check_format_version(data: dict, known: int) -> None:
    """Refuse a row written in a layout this fedsim does not know (absent: written before versions)."""
    if not readable_format(data, known):
        raise ValueError(f"{FORMAT_VERSION_FIELD}={data[FORMAT_VERSION_FIELD]!r}, this fedsim reads {known}: written by a newer fedsim?")
