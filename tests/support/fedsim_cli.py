"""`python -m fedsim ...` as a subprocess from the repository root, and its JSON result line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import REPO_ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def fedsim(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )


def result_json(completed: subprocess.CompletedProcess) -> dict:
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
