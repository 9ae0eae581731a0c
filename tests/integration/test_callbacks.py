"""The server loop's callbacks, in a real local world: every hook in order, fields merged, files written."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPO_ROOT as REPO
from tests.support.fedsim_cli import ENV

SCRIPT = """
import json, sys
from pathlib import Path
from fedsim.config import build_config
from fedsim.launch import launch_local
from fedsim.server.callbacks import RoundCallback

class Recorder(RoundCallback):
    def __init__(self):
        self.events = []
    def method_started(self, run):
        self.events.append(["method_started", run.method.name, run.ledger.fingerprint])
    def round_ended(self, run, result):
        self.events.append(["round_ended", result.round, result.clients, len(result.records)])
        return {"train_seconds": 1000.0 + result.round}
    def round_recorded(self, run, metrics):
        self.events.append(["round_recorded", metrics.round, metrics.epsilon, metrics.train_seconds, metrics.accuracy])
    def method_ended(self, run):
        self.events.append(["method_ended"])
        return {"loss": -1.0}
    def summary_recorded(self, run, summary):
        self.events.append(["summary_recorded", summary.epsilon, summary.loss])

out = Path(sys.argv[1])
recorder = Recorder()
config = build_config({}, num_clients=2, rounds=2, local_steps=1, limit=200, methods="dp-lora", eval_every=1, run_dir=str(out))
summaries = launch_local(config, out, None, [recorder])
print(json.dumps({"events": recorder.events, "summary": summaries[0].to_dict()}))
"""


def test_an_extra_callback_sees_every_hook_in_order_and_its_fields_win(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    events, summary = result["events"], result["summary"]
    assert [e[0] for e in events] == [
        "method_started", "round_ended", "round_recorded", "round_ended", "round_recorded", "method_ended", "summary_recorded",
    ]
    assert events[0][1:] == ["dp-lora", summary["ledger_fingerprint"]]
    assert events[1][1:] == [1, 2, 2] and events[3][1:] == [2, 2, 2]  # 2 clients reported, 1 record each
    first, second = events[2], events[4]
    assert 0 < first[2] < second[2] == summary["epsilon"]  # the ledger's ε, composed over rounds
    assert (first[3], second[3]) == (1001.0, 1002.0)  # the extra callback's field overrides the loop's
    assert first[4] is not None  # evaluation (a default callback) ran first: eval_every = 1
    assert events[6][1:] == [summary["epsilon"], -1.0] and summary["loss"] == -1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_seconds"] for r in rows] == [1001.0, 1002.0]  # metrics.jsonl holds the merged row
    assert json.loads((out / "summary.json").read_text())["loss"] == -1.0
    assert (out / "adapter").is_dir() and (out / "ledger.jsonl").is_file()
