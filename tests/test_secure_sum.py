"""Multi-process test of fedsim.secure_sum: 1 server + 3 clients over gloo on 127.0.0.1.

One world is started for the whole module (process start-up dominates the cost); it
runs two ordinary rounds and one round that the server must abort, and the server
writes what it returned and saw to a file that the tests below inspect.
"""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fedsim.secure_sum import (
    ADVERTISE_KEYS,
    SESSION_BYTES,
    MASKED_INPUT_COLLECTION,
    SecureSumConfig,
    client_secure_sum,
    server_secure_sum,
)
from secagg import FixedPointCodec, wrapping_sum

NUM_CLIENTS = 3
WORLD = NUM_CLIENTS + 1
DIM = 4099  # not a multiple of the AES block: exercises the keystream tail
ROUNDS = (0, 7)
EXPLICIT_GROUP_ROUND = 7  # this round runs over a gloo group made with new_group
CONFIG = SecureSumConfig(clip_range=2.0)
SESSION = bytes.fromhex("5e55104d0123456789abcdef00112233")
BAD_ROUND = 9  # client 2 announces a wrong dim: the server must abort the round


def client_update(client_id: int, round_idx: int) -> torch.Tensor:
    """Known float update of a client; some entries exceed the clip range."""
    gen = torch.Generator().manual_seed(10_000 * round_idx + client_id)
    update = torch.randn(DIM, generator=gen) * 1.5
    update[:8] = torch.tensor([2.0, -2.0, 5.0, -5.0, 1.999, -1.999, 0.0, 1e-9])
    return update


def rounding_generator(client_id: int, round_idx: int) -> torch.Generator:
    """Seeded rounding coins, so the test can recompute every client's encoded input."""
    return torch.Generator().manual_seed(777 + 100 * round_idx + client_id)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    groups = {EXPLICIT_GROUP_ROUND: dist.new_group(backend="gloo")}
    try:
        if rank == 0:
            results = {}
            for round_idx in ROUNDS:
                transcript: list = []
                total = server_secure_sum(
                    dim=DIM,
                    round_idx=round_idx,
                    session=SESSION,
                    num_clients=NUM_CLIENTS,
                    config=CONFIG,
                    group=groups.get(round_idx),
                    transcript=transcript,
                )
                results[round_idx] = {"sum": total, "transcript": transcript}
            try:
                server_secure_sum(
                    dim=DIM, round_idx=BAD_ROUND, session=SESSION,
                    num_clients=NUM_CLIENTS, config=CONFIG,
                )
                results["abort"] = "no error"
            except ValueError as exc:
                results["abort"] = str(exc)
            torch.save(results, Path(out_dir) / "server.pt")
        else:
            for round_idx in ROUNDS:
                client_secure_sum(
                    client_update(rank, round_idx),
                    client_id=rank,
                    round_idx=round_idx,
                    session=SESSION,
                    num_clients=NUM_CLIENTS,
                    config=CONFIG,
                    generator=rounding_generator(rank, round_idx),
                    group=groups.get(round_idx),
                )
            update = client_update(rank, BAD_ROUND)
            try:
                client_secure_sum(
                    update[:-1] if rank == 2 else update,
                    client_id=rank, round_idx=BAD_ROUND, session=SESSION,
                    num_clients=NUM_CLIENTS, config=CONFIG,
                    generator=rounding_generator(rank, BAD_ROUND),
                )
                outcome = "no error"
            except RuntimeError as exc:
                outcome = str(exc)
            torch.save(outcome, Path(out_dir) / f"client{rank}.pt")
    except BaseException:
        (Path(out_dir) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("secure_sum")
    # forkserver: one fresh interpreter imports torch and this module once (it runs no
    # torch op, so no threads exist when it forks); the 4 ranks start from it in
    # about a second instead of importing torch 4 times over (spawn: ~15 s here).
    mp.get_context("forkserver").set_forkserver_preload([__name__])
    mp.start_processes(
        _worker,
        args=(_free_port(), str(out_dir)),
        nprocs=WORLD,
        join=True,
        start_method="forkserver",
    )
    server = torch.load(out_dir / "server.pt", weights_only=False)
    clients = {r: torch.load(out_dir / f"client{r}.pt") for r in range(1, WORLD)}
    return {"server": server, "clients": clients}


def _encoded_inputs(round_idx: int) -> list[torch.Tensor]:
    codec = CONFIG.codec(NUM_CLIENTS)
    return [
        codec.encode(client_update(c, round_idx), rounding_generator(c, round_idx))
        for c in range(1, WORLD)
    ]


@pytest.mark.parametrize("round_idx", ROUNDS)
def test_server_sum_is_exact_decoded_sum_of_codes(world: dict, round_idx: int) -> None:
    codec = CONFIG.codec(NUM_CLIENTS)
    expected = codec.decode_sum(wrapping_sum(_encoded_inputs(round_idx)))
    got = world["server"][round_idx]["sum"]
    assert got.dtype == torch.float32 and got.shape == (DIM,)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("round_idx", ROUNDS)
def test_server_sum_close_to_float_sum_of_clipped_updates(world: dict, round_idx: int) -> None:
    updates = [client_update(c, round_idx) for c in range(1, WORLD)]
    float_sum = torch.stack(updates).clamp(-CONFIG.clip_range, CONFIG.clip_range).sum(0)
    step = 1.0 / CONFIG.codec(NUM_CLIENTS).scale
    # each client's stochastic rounding moves a coordinate by less than one step
    assert torch.allclose(world["server"][round_idx]["sum"], float_sum, rtol=0,
                          atol=NUM_CLIENTS * step + 1e-6)


@pytest.mark.parametrize("round_idx", ROUNDS)
def test_server_transcript_holds_no_unmasked_input(world: dict, round_idx: int) -> None:
    transcript = world["server"][round_idx]["transcript"]
    keys = [e for e in transcript if e.stage == ADVERTISE_KEYS]
    vectors = [e for e in transcript if e.stage == MASKED_INPUT_COLLECTION]
    assert sorted(e.client_id for e in keys) == list(range(1, WORLD))
    assert sorted(e.client_id for e in vectors) == list(range(1, WORLD))
    assert all(isinstance(e.payload, bytes) and len(e.payload) == 32 for e in keys)
    for encoded in _encoded_inputs(round_idx):
        for entry in vectors:
            y = entry.payload
            assert not torch.equal(y, encoded)
            # nor close: the ring distance |y - x| (mod 2^32, signed) is below 2^20
            # (1/4096 of the ring) only by chance, as for a uniform y
            distance = (y.to(torch.int64) - encoded.to(torch.int64) + 2**31) % 2**32 - 2**31
            close = distance.abs() < 2**20
            assert close.float().mean() < 0.01


def test_keys_are_fresh_per_round(world: dict) -> None:
    keys = [
        e.payload
        for r in ROUNDS
        for e in world["server"][r]["transcript"]
        if e.stage == ADVERTISE_KEYS
    ]
    assert len(set(keys)) == len(keys) == NUM_CLIENTS * len(ROUNDS)


def test_inconsistent_dim_aborts_round_everywhere(world: dict) -> None:
    assert "client 2 has dim 4098, server 4099" in world["server"]["abort"]
    for outcome in world["clients"].values():
        assert "server aborted round" in outcome and "client 2 has dim" in outcome


# --- argument checks (no processes needed: they fail before any message) -------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"clip_range": 0.0}, "clip_range"), ({"clip_range": float("nan")}, "clip_range"),
     ({"modulus_bits": 64}, "modulus_bits")],
)
def test_config_validates(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SecureSumConfig(**kwargs)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"session": b"short"}, "session"), ({"round_idx": -1}, "round_idx"),
     ({"num_clients": 0}, "num_clients"), ({"update": torch.zeros(2, 2)}, "flat"),
     ({"update": torch.zeros(4, dtype=torch.int32)}, "floating-point")],
)
def test_client_arguments_are_checked_first(change: dict, field: str) -> None:
    kwargs = {"update": torch.zeros(4), "client_id": 1, "round_idx": 0,
              "session": bytes(SESSION_BYTES), "num_clients": 3, "config": CONFIG,
              "generator": torch.Generator()}
    kwargs.update(change)
    update = kwargs.pop("update")
    with pytest.raises(ValueError, match=field):
        client_secure_sum(update, **kwargs)
