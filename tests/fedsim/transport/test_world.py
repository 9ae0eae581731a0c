"""Which device each rank trains on (fedsim.transport.world): the pure mapping with fake GPU
counts, and both ways a rank joins (torchrun's LOCAL_RANK, the local launcher's rank).

The attacks: a run that asked for ``cuda`` on a machine without one must fail naming
``device`` before it joins the world (not hang in the rendezvous, not train on the CPU), and
``cpu`` must win over any number of GPUs.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import logging
import socket
import sys

import pytest
import torch

from fedsim.config import ConfigError, RunConfig
from fedsim.errors import BAD_INPUT
from fedsim.transport import world as world_module
from fedsim.transport.world import SERVER_RANK, choose_device, device_for, init_from_torchrun, init_world, shutdown
from tests.support import REPO_ROOT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("gpus", [1, 2, 3, 8])
@pytest.mark.parametrize("choice", ["cuda", "auto"])
def test_ranks_wrap_over_the_gpus(gpus: int, choice: str) -> None:
    for local_rank in range(3 * gpus + 2):
        device = device_for(local_rank, gpus, choice)
        assert device.type == "cuda"
        assert device.index == local_rank % gpus


def test_clients_outnumbering_gpus_share_them_evenly_and_the_server_takes_gpu_0() -> None:
    """9 clients + the server on 4 GPUs (local launcher: local rank = rank): 3, 3, 2, 2 processes per GPU."""
    devices = [device_for(rank, 4, "auto") for rank in range(10)]
    assert devices[SERVER_RANK] == torch.device("cuda", 0)
    per_gpu = collections.Counter(d.index for d in devices)
    assert per_gpu == {0: 3, 1: 3, 2: 2, 3: 2}
    assert max(per_gpu.values()) - min(per_gpu.values()) <= 1


@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_cpu_wins_over_any_number_of_gpus(gpus: int) -> None:
    assert {device_for(r, gpus, "cpu") for r in range(6)} == {torch.device("cpu")}


def test_auto_without_cuda_is_the_cpu() -> None:
    assert device_for(3, 0, "auto") == torch.device("cpu")


def test_cuda_without_cuda_is_an_error_naming_device() -> None:
    with pytest.raises(ConfigError, match=r"^device='cuda' is invalid: expected 'cpu' or 'auto'") as caught:
        device_for(0, 0, "cuda")
    assert caught.value.field_name == "device"
    assert caught.value.exit_code == BAD_INPUT


@pytest.mark.parametrize("choice", ["gpu", "CUDA", "cuda:1", "", None])
def test_unknown_choices_are_refused(choice) -> None:
    with pytest.raises(ConfigError, match=r"^device=.* is invalid: expected one of \('auto', 'cpu', 'cuda'\)"):
        device_for(0, 2, choice)


@pytest.mark.parametrize(("local_rank", "gpus"), [(-1, 2), (0, -1), (True, 2), (1.0, 2), (0, 2.0)])
def test_bad_ranks_and_counts_are_refused(local_rank, gpus) -> None:
    with pytest.raises(ValueError, match=r"is invalid: expected an integer >= 0"):
        device_for(local_rank, gpus, "auto")


def test_choose_device_reads_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert choose_device(4) == torch.device("cuda", 1)
    assert choose_device(4, "cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(4) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device='cuda'"):
        choose_device(4, "cuda")


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """Two visible fake GPUs; the devices made current are recorded (no CUDA is touched)."""
    current: list[torch.device] = []
    monkeypatch.setattr(world_module, "visible_cuda_devices", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_under_torchrun_the_gpu_comes_from_local_rank(monkeypatch: pytest.MonkeyPatch, fake_gpus) -> None:
    """Global rank 0 of a one-rank world whose LOCAL_RANK is 3: cuda:(3 mod 2), not cuda:(RANK mod 2)."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    world = init_from_torchrun(30.0)
    try:
        assert world.local_rank == 3
        assert world.device == torch.device("cuda", 1)
        assert fake_gpus == [torch.device("cuda", 1)]
    finally:
        shutdown()


def test_the_local_launchers_rank_picks_the_gpu_and_cpu_is_kept(fake_gpus) -> None:
    """The local launcher passes local_rank = rank; ``device="cpu"`` keeps the CPU despite the GPUs."""
    world = init_world(rank=0, world_size=1, local_rank=5, init_method=f"tcp://127.0.0.1:{free_port()}",
                       timeout_s=30.0, device="auto")
    assert world.device == torch.device("cuda", 1)
    cpu = init_world(rank=0, world_size=1, local_rank=5, init_method=f"tcp://127.0.0.1:{free_port()}",
                     timeout_s=30.0, device="cpu")
    assert cpu.device == torch.device("cpu")
    assert fake_gpus == [torch.device("cuda", 1)]  # the CPU rank made no GPU current
    shutdown()


def test_cuda_without_cuda_fails_before_the_rendezvous(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 of a world of 2 whose rank 0 never comes: reaching the rendezvous would wait
    its whole timeout; the device check must fail first."""
    monkeypatch.setattr(world_module, "visible_cuda_devices", lambda: 0)

    def no_rendezvous(*args, **kwargs):
        raise AssertionError("joined the rendezvous before checking the device")

    monkeypatch.setattr(world_module.dist, "rendezvous", no_rendezvous)
    with pytest.raises(ConfigError, match="device='cuda'"):
        init_world(rank=1, world_size=2, local_rank=1, init_method=f"tcp://127.0.0.1:{free_port()}",
                   timeout_s=600.0, device="cuda")


# ------------------------------------------------------------ the device check script
# benchmarks/gpu/check.py reads each rank's device from the line init_world logs; its
# quick CPU mode runs here in-process (the default job part, a real multi-process run, is
# tested by its pieces: it is the device machine's to run).

CHECK_PY = REPO_ROOT / "benchmarks" / "gpu" / "check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check", CHECK_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_check_reads_each_ranks_device_from_init_worlds_log(check, fake_gpus, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=world_module.__name__):
        init_world(rank=0, world_size=1, local_rank=3, init_method=f"tcp://127.0.0.1:{free_port()}", timeout_s=30.0)
    log = "\n".join(f"[rank 0] INFO {r.name}: {r.getMessage()}" for r in caplog.records)
    assert check.rank_devices(log) == {0: "cuda:1"}
    assert check.rank_devices("[rank 7] INFO fedsim.transport.world: rank 7/9 (local rank 7) on cpu\n") == {7: "cpu"}


def test_the_checks_job_runs_fedsim_with_the_device_and_parses_nvidia_smi(check, tmp_path) -> None:
    command = check.job_command("python", tmp_path / "run", 2, "cuda")
    assert command[:4] == ["python", "-m", "fedsim", "run"]
    assert command[command.index("--rounds") + 1] == "2" and command[command.index("--device") + 1] == "cuda"
    assert "--device" not in check.job_command("python", tmp_path / "run", 2, None)
    assert check.device_option_available() == ("device" in {f.name for f in dataclasses.fields(RunConfig)})
    assert check.parse_compute_apps("1234, 812\n 99, 4096 \n[N/A], 3\nNo running processes found\n") == {1234: 812.0, 99: 4096.0}


def test_the_check_runs_on_the_cpu_at_test_sizes(check, tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    doc = check.main(["--cpu", "--quick", "--parts", "dp_steps,secure_round", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc, default=str))
    assert doc["errors"] == {} and doc["device"] == "cpu"
    steps = [doc[k] for k in doc if k.startswith("dp_step ")]
    assert [s["timm_name"] for s in steps] == ["vit_base_patch16_224", "swin_tiny_patch4_window7_224"]
    for s in steps:
        assert s["dp_ms_per_sample"] > 0 and s["plain_ms_per_sample"] > 0 and s["trainable_values"] > 0
        assert s["dp_over_plain"] == pytest.approx(s["dp_ms_per_sample"] / s["plain_ms_per_sample"])
    secure = doc["secure_round"]
    assert secure["max_abs_error"] <= secure["error_bound"]  # the decoded secure sum is the true sum
    assert secure["secure_ms"] >= secure["protocol_ms"] > 0


def test_the_check_refuses_unknown_parts(check) -> None:
    with pytest.raises(ValueError, match="--parts='dp_steps,gpu' is invalid"):
        check.main(["--cpu", "--quick", "--parts", "dp_steps,gpu", "--out", "/dev/null"])
