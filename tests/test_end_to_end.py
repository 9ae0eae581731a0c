"""End to end: real processes, real torch.distributed, Opacus, peft, secagg and PRV.

Both launch paths are covered: `fedsim run` spawning its own local world, and
`python -m torch.distributed.run` (torchrun) starting the ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def fedsim(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def result_json(completed: subprocess.CompletedProcess) -> dict:
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


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


def test_saved_adapter_loads_back_with_peft(text_run):
    import peft

    from fedsim.config import config_from_json
    from fedsim.job import model_spec
    from fedsim.models import build_base_model

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


def test_bad_input_exits_2_naming_the_field(tmp_path):
    completed = fedsim("run", "--noise-multiplier", "-1", "--run-dir", str(tmp_path / "x"))
    assert completed.returncode == 2
    assert "noise_multiplier" in completed.stderr and "-1" in completed.stderr
    assert not (tmp_path / "x").exists()


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


def test_a_dead_client_fails_the_run_cleanly_and_completed_rounds_survive(tmp_path):
    """Kill a client mid-run: exit 1 naming it, no hang; ledger, metrics and adapter intact."""
    import time

    import psutil

    from accounting import read_ledger

    run_dir = tmp_path / "crash"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "fedsim", "run", "--clients", "2", "--rounds", "500", "--local-steps", "1",
            "--limit", "200", "--batch-size", "8", "--eval-every", "1000", "--run-dir", str(run_dir),
        ],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ledger = run_dir / "ledger.jsonl"
    deadline = time.monotonic() + 300
    while not (ledger.exists() and len(ledger.read_text().splitlines()) >= 4):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before two rounds"
        time.sleep(0.2)
    forkserver_children = [
        p for p in psutil.Process(process.pid).children(recursive=True)
        if any("forkserver" in part for part in psutil.Process(p.ppid()).cmdline())
    ]
    assert len(forkserver_children) == 2  # the two client processes
    forkserver_children[0].kill()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "exited with code -9" in stderr
    records = read_ledger(ledger)  # every line whole: fsync per round, never a torn record
    rounds = sorted({r.round for r in records})
    assert rounds == list(range(1, len(rounds) + 1)) and len(records) == 2 * len(rounds)
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= len(rounds) - 1
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


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
