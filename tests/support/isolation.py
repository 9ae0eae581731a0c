"""docs/architecture.md's one-way dependencies, checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO_ROOT


def loaded_modules_after_import(package: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of ``candidates`` a fresh ``import package`` pulls into sys.modules."""
    code = f"import sys, {package}\nprint(','.join(m for m in {candidates!r} if m in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [m for m in result.stdout.strip().split(",") if m]
