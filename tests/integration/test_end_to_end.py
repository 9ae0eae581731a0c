"""End to end: real processes, real torch.distributed, Opacus, peft, secagg and PRV.

Both launch paths are covered: `fedsim run` spawning its own local world, and
`python -m torch.distributed.run` (torchrun) starting the ranks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support import REPO_ROOT as REPO
from tests.support.fedsim_cli import ENV, fedsim, result_json


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, dict]:
    """A short run of the default text job: 2 clients, bundled MiniLM, two methods."""
    run_dir = tmp_path_factory.mktemp("runs") / "text"
    completed = fedsim(
        "run", "--method", "la-lora,ffa-lora", "--clients", "2", "--rounds", "2", "--local-steps", "2",
        "--limit", "240", "--batch-size", "16", "--eval-every", "2", "--run-dir", str(run_dir),
    )
    return run_dir, result_json(completed)


def test_local_world_writes_a_complete_run_dir(text_run):
    run_dir, result = text_run
    assert [r["method"] for r in result["results"]] == ["la-lora", "ffa-lora"]
    assert json.loads((run_dir / "config.json").read_text())["num_clients"] == 2
    assert (run_dir / "curves.png").stat().st_size > 10_000  # accuracy and ε per round, both methods
    for method in ("la-lora", "ffa-lora"):
        out = run_dir / method
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [m["round"] for m in metrics] == [1, 2]
        ledger = (out / "ledger.jsonl").read_text().splitlines()
        assert len(ledger) == 2 * 2  # one record per client per round
        assert (out / "adapter" / "adapter_config.json").is_file()
    for summary in result["results"]:
        assert 0 < summary["epsilon"] < 50 and summary["delta"] == 1e-5
        assert 0.0 <= summary["accuracy"] <= 1.0


def test_budget_recomputes_the_printed_epsilon_from_the_ledger(text_run):
    run_dir, result = text_run
    rows = json.loads(fedsim("budget", "show", str(run_dir), "--json").stdout)
    assert {r["method"] for r in rows} == {"la-lora", "ffa-lora"}
    for summary in result["results"]:
        worst = max(r["epsilon_upper"] for r in rows if r["method"] == summary["method"])
        assert worst == summary["epsilon"]
        assert all(r["epsilon_lower"] <= r["epsilon_estimate"] <= r["epsilon_upper"] for r in rows)
        assert all(r["steps"] == 2 * 2 for r in rows)


def test_a_real_run_verifies_against_its_printed_fingerprint(text_run, tmp_path):
    """The signed ledger of a real run passes `budget verify` pinned to the key the run printed."""
    run_dir, result = text_run
    for summary in result["results"]:
        assert summary["epsilon_rdp"] >= summary["epsilon"] > 0  # RDP is the looser bound
        out = run_dir / summary["method"]
        fingerprint = summary["ledger_fingerprint"]
        ok = fedsim("budget", "verify", str(out), "--fingerprint", fingerprint)
        assert ok.returncode == 0, ok.stderr
        wrong = fedsim("budget", "verify", str(out), "--fingerprint", "0" * 64)
        assert wrong.returncode == 1


def test_saved_adapter_loads_back_with_peft(text_run):
    import peft

    from fedsim.config import config_from_json
    from fedsim.task import model_spec
    from fedsim.models.build import build_base_model

    run_dir, _ = text_run
    config = config_from_json((run_dir / "config.json").read_text())
    spec = model_spec(config, num_classes=8)
    base = build_base_model(spec)
    loaded = peft.PeftModel.from_pretrained(base, str(run_dir / "la-lora" / "adapter"))
    saved = peft.utils.load_peft_weights(str(run_dir / "la-lora" / "adapter"))
    state = peft.get_peft_model_state_dict(loaded)
    assert set(saved) == set(state)
    for name, value in saved.items():
        torch.testing.assert_close(state[name], value)
    assert any("lora_B" in name and value.abs().sum() > 0 for name, value in saved.items())


def test_torchrun_launch_trains_a_timm_vit_on_digits(tmp_path):
    config = tmp_path / "vit.toml"
    config.write_text(
        'methods = ["dp-lora"]\ndataset = "digits"\nmodel = "vit_tiny_patch16_224"\npretrained = false\n'
        "img_size = 16\nlimit = 300\nrounds = 2\nlocal_steps = 2\nbatch_size = 16\neval_every = 1\n"
        "[model_kwargs]\npatch_size = 4\ndepth = 2\nembed_dim = 48\nnum_heads = 2\n"
    )
    run_dir = tmp_path / "vit"
    completed = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
            "-m", "fedsim", "run", "--config", str(config), "--run-dir", str(run_dir),
        ],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400,
    )
    result = result_json(completed)
    assert result["results"][0]["method"] == "dp-lora"
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert sorted({r["client"] for r in ledger}) == [1, 2]  # WORLD_SIZE 3 = server + 2 clients
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["accuracy"] is not None for m in metrics)


def test_the_default_job_learns_under_dp(tmp_path):
    """`fedsim run` with no options: the README's first command (accuracy and ε claims)."""
    run_dir = tmp_path / "default"
    result = result_json(fedsim("run", "--run-dir", str(run_dir), timeout=600))
    (summary,) = result["results"]
    assert summary["method"] == "la-lora" and summary["rounds"] == 8
    assert summary["initial_accuracy"] < 0.2  # untrained: near chance (1/8)
    assert summary["accuracy"] >= 0.5, summary  # clearly learned, under DP
    assert summary["epsilon_method"] == "prv" and 2.7 < summary["epsilon"] < 2.9
    rows = json.loads(fedsim("budget", "show", str(run_dir), "--json").stdout)
    assert len(rows) == 4 and max(r["epsilon_upper"] for r in rows) == summary["epsilon"]


def client_processes(process: subprocess.Popen) -> list:
    """The client processes of a local world: the forkserver's children."""
    import psutil

    return [
        p for p in psutil.Process(process.pid).children(recursive=True)
        if any("forkserver" in part for part in psutil.Process(p.ppid()).cmdline())
    ]


def start_and_kill_a_client(run_dir: Path, clients: int, rounds: int, after_rounds: int) -> subprocess.Popen:
    """Start a small local run and SIGKILL one client process once ``after_rounds`` rounds are in the ledger."""
    import time

    process = subprocess.Popen(
        [
            sys.executable, "-m", "fedsim", "run", "--clients", str(clients), "--rounds", str(rounds),
            "--local-steps", "1", "--limit", "200", "--batch-size", "8", "--eval-every", "1000",
            "--run-dir", str(run_dir),
        ],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ledger = run_dir / "ledger.jsonl"
    deadline = time.monotonic() + 300
    while not (ledger.exists() and len(ledger.read_text().splitlines()) >= clients * after_rounds):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended too early"
        time.sleep(0.2)
    children = client_processes(process)
    assert len(children) == clients
    children[-1].kill()
    return process


def ledger_rounds(run_dir: Path) -> dict[int, list[int]]:
    from accounting import read_ledger

    by_round: dict[int, list[int]] = {}
    for record in read_ledger(run_dir / "ledger.jsonl"):  # every line whole: fsync per round
        by_round.setdefault(record.round, []).append(record.client)
    return by_round


def test_a_dead_client_is_dropped_and_the_run_goes_on_with_the_survivors(tmp_path):
    """Kill one of 3 client processes mid-run: warning naming it, exit 0, rounds after it with 2 clients."""
    run_dir = tmp_path / "survive"
    process = start_and_kill_a_client(run_dir, clients=3, rounds=10, after_rounds=2)
    stdout, stderr = process.communicate(timeout=300)
    result = result_json(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    (summary,) = result["results"]
    assert list(summary["dropped_processes"]) == ["3"] and "connection lost" in summary["dropped_processes"]["3"]
    assert "client process rank 3 was dropped" in stderr
    by_round = ledger_rounds(run_dir)
    assert sorted(by_round) == list(range(1, 11))
    assert by_round[1] == [1, 2, 3] and by_round[10] == [1, 2]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 10 and metrics[-1]["survivors"] == 2
    assert any(3 in ids for m in metrics for ids in m["dropped"].values())
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


def test_too_few_survivors_end_the_run_cleanly_and_completed_rounds_survive(tmp_path):
    """Kill one of 2 clients: the round in flight aborts (t = 2), the next cannot run with 1:
    exit 1 naming why; files intact."""
    run_dir = tmp_path / "crash"
    process = start_and_kill_a_client(run_dir, clients=2, rounds=500, after_rounds=2)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "cannot run: 1 client(s) left" in stderr and "rank 2: connection lost" in stderr
    by_round = ledger_rounds(run_dir)
    rounds = sorted(by_round)
    assert rounds == list(range(1, len(rounds) + 1)) and all(by_round[r] == [1, 2] for r in rounds[:-1])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # t >= 2 (one survivor would be released): the round the death hits aborts; if it hit
    # before anyone trained, that round has a metrics row and no ledger record
    assert [m["round"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert rounds == [m["round"] for m in metrics][: len(rounds)] and len(metrics) - len(rounds) in (0, 1)
    assert metrics[-1]["aborted"] and "below threshold 2" in metrics[-1]["abort_reason"]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


def test_injected_dropouts_are_survived_recorded_and_an_abort_leaves_the_model_unchanged(tmp_path):
    """Round 2 loses client 3 at ShareKeys (before it trains; sum of 2); round 3 loses 1 and 2 at
    MaskedInputCollection (after training: 1 survivor is below the threshold, abort)."""
    run_dir = tmp_path / "drops"
    result = result_json(fedsim(
        "run", "--clients", "3", "--rounds", "3", "--local-steps", "2", "--limit", "200", "--batch-size", "8",
        "--eval-every", "1", "--run-dir", str(run_dir),
        "--drop", "2:ShareKeys:3", "--drop", "3:MaskedInputCollection:1,2",
    ))
    (summary,) = result["results"]
    assert summary["aborted_rounds"] == 1 and summary["dropped_processes"] == {}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["survivors"], m["aborted"], m["dropped"]) for m in metrics] == [
        (3, False, {}), (2, False, {"ShareKeys": [3]}), (0, True, {"MaskedInputCollection": [1, 2]}),
    ]
    assert "MaskedInputCollection" in metrics[2]["abort_reason"]
    # the aborted round left the global model as it was: the same evaluation, to the bit
    assert (metrics[2]["accuracy"], metrics[2]["loss"]) == (metrics[1]["accuracy"], metrics[1]["loss"])
    # every client that trained has its record, dropped or not; client 3 left round 2 before training
    assert ledger_rounds(run_dir) == {1: [1, 2, 3], 2: [1, 2], 3: [1, 2, 3]}
    assert metrics[2]["epsilon"] > metrics[1]["epsilon"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dropout_schedule"] == {"2": {"ShareKeys": [3]}, "3": {"MaskedInputCollection": [1, 2]}}


def test_the_active_threat_model_runs_over_real_processes_with_the_store_pki(tmp_path):
    """Identity keys through the rendezvous store, signed adverts, the ConsistencyCheck: a
    client that goes silent at ConsistencyCheck still counts (its masked input is in), and
    the round completes from the other two signatures (t = 2 > (3 + 0) / 2)."""
    run_dir = tmp_path / "active"
    result = result_json(fedsim(
        "run", "--clients", "3", "--rounds", "2", "--local-steps", "1", "--limit", "200", "--batch-size", "8",
        "--eval-every", "1000", "--run-dir", str(run_dir), "--secagg-threat-model", "active",
        "--drop", "2:ConsistencyCheck:3",
    ))
    (summary,) = result["results"]
    assert summary["aborted_rounds"] == 0 and summary["dropped_processes"] == {}
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["survivors"], m["dropped"], m["rejections"]) for m in metrics] == [
        (3, {}, []), (3, {"ConsistencyCheck": [3]}, []),
    ]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["secagg_threat_model"], config["secagg_consistency_check"]) == ("active", True)


def test_swin_trains_under_opacus_in_a_local_world(tmp_path):
    """timm Swin (windows folded into the batch) through the real DP optimizer, head trained."""
    config = tmp_path / "swin.toml"
    config.write_text(
        'methods = ["la-lora"]\ndataset = "digits"\nmodel = "swin_tiny_patch4_window7_224"\npretrained = false\n'
        "img_size = 32\nlimit = 200\nrounds = 2\nlocal_steps = 2\nbatch_size = 16\n"
        "[model_kwargs]\nwindow_size = 4\nembed_dim = 24\ndepths = [1, 1]\nnum_heads = [1, 2]\ndrop_path_rate = 0.0\n"
    )
    run_dir = tmp_path / "swin"
    result = result_json(fedsim("run", "--config", str(config), "--clients", "2", "--run-dir", str(run_dir)))
    (summary,) = result["results"]
    assert summary["rounds"] == 2 and summary["loss"] == summary["loss"]  # finished, loss not NaN
    assert len((run_dir / "ledger.jsonl").read_text().splitlines()) == 4
