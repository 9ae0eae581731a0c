"""The layout of a run directory: what `fedsim run` writes and `fedsim budget` reads.

A single-method run keeps its files at the top; a comparison gets one folder per method.
Imports nothing heavy, so readers of finished runs stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

CONFIG_FILE = "config.json"
LEDGER_FILE = "ledger.jsonl"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
PLOT_FILE = "curves.png"


def method_run_dir(run_dir: Path, methods: Sequence[str], method: str) -> Path:
    """Where one method's outputs go: the run dir itself, or a subfolder per method."""
    return run_dir if len(methods) == 1 else run_dir / method


def find_ledgers(run_dir: Path) -> dict[str, Path]:
    """The ledger of a single-method run dir, or one per method subfolder, by folder name."""
    if (run_dir / LEDGER_FILE).is_file():
        return {run_dir.name: run_dir / LEDGER_FILE}
    return {p.parent.name: p for p in sorted(run_dir.glob(f"*/{LEDGER_FILE}"))}
