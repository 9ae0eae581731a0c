"""The README's first command, timed: the default job end to end (target ≤ 180 s).

Runs `fedsim run` (all defaults) in a fresh run directory and prints the wall time with
the accuracy before and after training and the ε it reported.

    python benchmarks/bench_default_job.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 180.0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-m", "fedsim", "run", "--run-dir", str(Path(tmp) / "run")],
            capture_output=True, text=True, check=True,
        )
        wall = time.perf_counter() - start
    (summary,) = json.loads(completed.stdout.strip().splitlines()[-1])["results"]
    print(f"default job ({summary['method']}, {summary['rounds']} rounds): {wall:.1f} s wall "
          f"(target <= {TARGET_S:.0f} s: {'PASS' if wall <= TARGET_S else 'MISS'}), "
          f"ratio {wall / TARGET_S:.2f} of target")
    print(f"accuracy {summary['initial_accuracy']:.3f} -> {summary['accuracy']:.3f}, "
          f"epsilon {summary['epsilon']:.3f} at delta {summary['delta']:g} ({summary['epsilon_method']})")


if __name__ == "__main__":
    main()
