"""The layout of a run directory: what `fedsim run` writes and `fedsim budget` reads.

A single-method run keeps its files at the top; a comparison gets one folder per method.
Imports nothing heavy, so readers of finished runs stay fast.

Persisted formats carry an integer ``format_version``: every ``metrics.jsonl`` row, the
``summary.json`` and ``config.json`` objects (and every ledger line, in :mod:`accounting`).
Stability rule: within a version, a field's name and meaning never change and fields are
never removed; a reader refuses a version it does not know rather than guess. Adding a
field that old readers may ignore keeps the version; any other change bumps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

CONFIG_FILE = "config.json"
LEDGER_FILE = "ledger.jsonl"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
PLOT_FILE = "curves.png"
STATE_FILE = "state.json"
"""A method's last committed round and status (:class:`fedsim.resume.MethodState`): what ``--resume`` reads."""

FORMAT_VERSION_FIELD = "format_version"
METRICS_FORMAT_VERSION = 1
"""Layout of one ``metrics.jsonl`` row (:class:`fedsim.events.RoundMetrics`)."""
SUMMARY_FORMAT_VERSION = 1
"""Layout of ``summary.json`` (:class:`fedsim.events.MethodSummary`)."""
CONFIG_FORMAT_VERSION = 1
"""Layout of ``config.json`` (:meth:`fedsim.config.RunConfig.to_json`)."""
STATE_FORMAT_VERSION = 1
"""Layout of ``state.json`` and of the global-state files it names (:mod:`fedsim.resume`)."""


def global_state_file(round_idx: int) -> str:
    """The file of every trainable parameter's global value after ``round_idx`` (safetensors)."""
    return f"global_state.r{round_idx:06d}.safetensors"


def readable_format(data: Mapping[str, Any], known: int) -> bool:
    """Whether this fedsim reads a persisted object: its ``format_version`` is ``known``.

    An object without the field was written before versions existed and reads as ``known``.
    """
    version = data.get(FORMAT_VERSION_FIELD, known)
    return version == known and not isinstance(version, bool)


def method_run_dir(run_dir: Path, methods: Sequence[str], method: str) -> Path:
    """Where one method's outputs go: the run dir itself, or a subfolder per method."""
    return run_dir if len(methods) == 1 else run_dir / method


def find_ledgers(run_dir: Path) -> dict[str, Path]:
    """The ledger of a single-method run dir, or one per method subfolder, by folder name."""
    if (run_dir / LEDGER_FILE).is_file():
        return {run_dir.name: run_dir / LEDGER_FILE}
    return {p.parent.name: p for p in sorted(run_dir.glob(f"*/{LEDGER_FILE}"))}
