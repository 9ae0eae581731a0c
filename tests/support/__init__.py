"""Helpers shared by the tests (not tests themselves): worlds of processes, the tiny LoRA
fixture, fresh-interpreter import checks, the `fedsim` command line as a subprocess."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (tests/support/__init__.py is two levels below it)."""
