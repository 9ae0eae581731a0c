"""A run killed with SIGKILL after round 2 of 4, then resumed: one small real-process scenario.

What must hold: the ledger verifies across its two segments, each pinned to its own key;
every client's final ε is what composing its mechanisms cold gives (and, when the kill
landed between rounds, exactly an uninterrupted 4-round run's); metrics.jsonl has every
round once; the adapter loads with peft and holds the final global state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from accounting import audit_ledger

from tests.support import REPO_ROOT
from tests.support.fedsim_cli import ENV, fedsim, result_json

ROUNDS = 4
CONFIG = f"num_clients = 2\nrounds = {ROUNDS}\nlocal_steps = 2\nlimit = 160\nbatch_size = 16\neval_every = 2\n"


def committed_round(run_dir: Path) -> int:
    """The last committed round (``state.json``: written last of a round's files, atomically)."""
    try:
        return json.loads((run_dir / "state.json").read_text())["round"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    base = tmp_path_factory.mktemp("resume")
    run_dir, config = base / "run", base / "small.toml"
    config.write_text(CONFIG)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fedsim", "run", "--config", str(config), "--run-dir", str(run_dir)],
        cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while committed_round(run_dir) < 2 and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and every client process, mid-round 3 (or between)
    _, stderr = launcher.communicate(timeout=60)
    committed = committed_round(run_dir)
    assert 2 <= committed < ROUNDS, f"killed after round {committed}, expected 2 or 3: {stderr[-3000:]}"
    first_key = json.loads((run_dir / "state.json").read_text())["ledger_fingerprints"]
    completed = fedsim("run", "--resume", str(run_dir))
    return run_dir, result_json(completed), first_key


def test_the_resumed_ledger_verifies_with_both_fingerprints(resumed_run):
    run_dir, result, first_key = resumed_run
    (summary,) = result["results"]
    fingerprints = summary["ledger_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == first_key[0] and summary["ledger_fingerprint"] == fingerprints[1]
    pins = [arg for fp in fingerprints for arg in ("--fingerprint", fp)]
    checked = fedsim("budget", "verify", str(run_dir), *pins)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("(pinned)") == 2
    swapped = audit_ledger(run_dir / "ledger.jsonl", fingerprints=fingerprints[::-1])
    assert any("segment 1 (records 1.." in str(p) and "not in the order" in str(p) for p in swapped.problems)
    alone = audit_ledger(run_dir / "ledger.jsonl", fingerprint=fingerprints[0])
    assert any("not pinned: segment 2" in str(p) for p in alone.problems)


def test_every_clients_epsilon_is_the_cold_composition_of_its_four_rounds(resumed_run):
    from accounting import BudgetTracker, read_ledger

    run_dir, result, _ = resumed_run
    (summary,) = result["results"]
    records = read_ledger(run_dir / "ledger.jsonl")
    by_client: dict[int, list] = {}
    for record in records:
        by_client.setdefault(record.client, []).append(record)
    assert sorted(by_client) == [1, 2]
    cold = BudgetTracker(summary["delta"]).add(records)  # one accountant, every record at once
    parties = {p.client: p for p in cold.parties()}
    worst = cold.worst()
    assert summary["epsilon"] == worst.prv.upper and summary["epsilon_rdp"] == worst.rdp
    for client, own in by_client.items():
        assert {r.round for r in own} == {1, 2, 3, 4}
        # An uninterrupted run: one record per round. A kill between a round's ledger write
        # and its commit leaves that round's records too: real releases, accounted, never fewer.
        per_round = {r.round: r for r in own}
        alone = BudgetTracker(summary["delta"]).add([per_round[r] for r in sorted(per_round)])
        (uninterrupted,) = [p.prv.upper for p in alone.parties() if p.client == client]
        if len(own) == ROUNDS:
            assert parties[client].prv.upper == uninterrupted
        else:
            assert len(own) == ROUNDS + 1 and parties[client].prv.upper > uninterrupted


def test_metrics_hold_each_round_once(resumed_run):
    run_dir, result, _ = resumed_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2, 3, 4]
    assert rows[-1]["epsilon"] == result["results"][0]["epsilon"]
    state = json.loads((run_dir / "state.json").read_text())
    assert (state["status"], state["round"]) == ("complete", 4)
    assert sorted(p.name for p in run_dir.glob("global_state.*")) == ["global_state.r000004.safetensors"]


def test_the_adapter_loads_with_peft_and_holds_the_final_global_state(resumed_run):
    import peft
    from safetensors.torch import load_file

    from fedsim.config import config_from_json
    from fedsim.models.build import build_base_model
    from fedsim.task import model_spec

    run_dir, _, _ = resumed_run
    config = config_from_json((run_dir / "config.json").read_text())
    base = build_base_model(model_spec(config, num_classes=8))
    loaded = peft.PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    adapter = peft.get_peft_model_state_dict(loaded)
    final = load_file(str(run_dir / "global_state.r000004.safetensors"))
    # peft names a saved tensor without the adapter's name, and the trained head without "modules_to_save"
    expected = {name.replace(".default", "").replace("modules_to_save.", ""): value for name, value in final.items()}
    assert set(expected) == set(adapter)
    assert any("lora_B" in name and value.abs().sum() > 0 for name, value in expected.items())
    for name, value in expected.items():
        torch.testing.assert_close(adapter[name], value)


# ----------------------------------------------------------------- in process, no world


def test_a_resume_refuses_every_change_but_rounds_and_runtime_settings_naming_the_field():
    from fedsim.config import ConfigError, RunConfig
    from fedsim.resume import resumed_config

    saved = RunConfig(rounds=4, noise_multiplier=1.3, methods=("la-lora", "dp-lora"))
    assert resumed_config(saved, {"rounds": 6, "threads_per_process": 2, "timeout_s": 30.0}) == RunConfig(
        rounds=6, noise_multiplier=1.3, methods=("la-lora", "dp-lora"), threads_per_process=2, timeout_s=30.0
    )
    assert resumed_config(saved, {"methods": "la-lora,dp-lora", "noise_multiplier": 1.3}) is saved  # the same values
    for field, value in (("noise_multiplier", 0.5), ("lr", 0.1), ("methods", "la-lora"), ("num_clients", 3), ("seed", 1)):
        with pytest.raises(ConfigError) as info:
            resumed_config(saved, {field: value})
        assert info.value.field_name == field and "a resumed run may change only rounds" in str(info.value)
    with pytest.raises(ConfigError, match=r"rounds=3 is invalid: expected an integer >= 4"):
        resumed_config(saved, {"rounds": 3})
    with pytest.raises(ConfigError, match="a known field"):
        resumed_config(saved, {"colour": "red"})


def test_sigint_raises_outside_a_critical_section_and_waits_inside_one():
    from fedsim.resume import InterruptSignals, RunInterrupted, critical_section

    before = signal.getsignal(signal.SIGINT)
    with InterruptSignals().installed():
        with pytest.raises(KeyboardInterrupt) as info:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler raises at once
            except Exception:  # what the protocol code catches: not an interruption
                pytest.fail("an interruption must not be an Exception")
        assert RunInterrupted.of(info.value).exit_code == 130 and "SIGINT" in str(RunInterrupted.of(info.value))
        recorded = []
        with pytest.raises(KeyboardInterrupt) as info:
            with critical_section():
                os.kill(os.getpid(), signal.SIGTERM)
                recorded.append("the round is recorded whole")
        assert recorded and RunInterrupted.of(info.value).exit_code == 143
    assert signal.getsignal(signal.SIGINT) is before
    with critical_section():  # without the launcher's handler: nothing deferred, nothing raised
        pass


def test_an_interrupted_round_hands_back_the_records_of_the_clients_that_reported():
    """SIGINT while the secure sum waits: the reports that arrived become the abandoned records."""
    from types import SimpleNamespace

    from fedsim.population import Population, cohort_sampling
    from fedsim.config import RunConfig
    from fedsim.methods.registry import get_method
    from fedsim.resume import interruption
    from fedsim.secure_sum.config import secure_sum_config
    from fedsim.server.loop import MethodServer
    from fedsim.transport.payloads import RoundReport

    config = RunConfig(num_clients=2, methods=("deer",), local_steps=2)
    server = MethodServer.__new__(MethodServer)
    server.run = SimpleNamespace(config=config, method=get_method("deer"), factors={})
    server.relay = SimpleNamespace(live=[1, 2], dropped={})
    server.population, server.sampling, server.secagg = Population(2, 2), cohort_sampling(config), secure_sum_config(config)
    server.round_steps = {1: 2, 2: 2}  # K = 2 for both clients (MethodServer.__init__ derives it from the partition)
    phases = []

    def run_phase(phase, hosts, wait):
        phases.append(phase)
        wait.reports[1] = RoundReport(1, 1, 0.05, 1.0)
        if len(phases) == 2:  # DEeR's second phase: client 1 reported, then Ctrl-C
            raise interruption(signal.SIGINT)
        wait.reports[2] = RoundReport(2, 1, 0.05, 1.0)
        return SimpleNamespace(aborted=False, corrupted=False, cohort=(1, 2), survivors=(1, 2))

    server.run_phase = run_phase
    with pytest.raises(KeyboardInterrupt) as info:
        server.run_round(3)
    assert [(r.round, r.client) for r in info.value.abandoned] == [(3, 1), (3, 2), (3, 1)]
