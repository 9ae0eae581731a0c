"""The relay and the stage driver, against a tiny fake protocol (the contract, not secagg).

(Frames: tests/fedsim/transport/test_framing.py; the socket relay's attacks one by one, in
one process: tests/fedsim/transport/test_relay.py; dropout plans:
tests/fedsim/secure_sum/test_dropouts.py.) One world of 1 server + 4 client processes
(rendezvous on 127.0.0.1, frames over the relay's sockets) hosting 10 virtual clients
runs a scripted sequence of rounds: clean, injected dropouts, a garbage header, a reply
for a foreign client, a process killed mid-round, a process that stops answering. The
server writes what it saw to a file that the tests below inspect.

A second world of 3 processes is issue 10's "a client can kill the server" in real
processes: one client announces a 2^40-byte body, then opens a second connection
claiming the honest client's rank; the server drops and refuses it, names why, finishes
its rounds with the honest client and exits normally.
"""

from __future__ import annotations

import os
import struct
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from fedsim.secure_sum.dropouts import DropoutPlan
from fedsim.secure_sum.stages import client_stages, server_stages
from fedsim.transport.framing import HEADER_BYTES, Frame, encode_frame
from fedsim.transport.relay import (
    ClientRelay,
    Evicted,
    RelayError,
    ServerRelay,
    connect_to_server,
)
from fedsim.transport.vocabulary import Kind
from fedsim.transport.world import World, init_world, shutdown
from tests.support.process_world import free_port, run_world

# --- a fake protocol with the contract's shape ------------------------------------------

FAKE_STAGES = ("AdvertiseKeys", "ShareKeys", "MaskedInputCollection", "Unmasking")


class FakeRefusal(Exception):
    """Stands for ``secagg.protocol.ProtocolError``."""


class FakeServerRound:
    """Asks every live client each stage; collects values at MaskedInputCollection; sums.

    Aborts when fewer than ``threshold`` clients are left; never raises on replies.
    """

    def __init__(self, cohort: tuple[int, ...], threshold: int) -> None:
        self.live = set(cohort)
        self.threshold = threshold
        self.index = 0
        self.values: dict[int, int] = {}
        self.done = self.aborted = False
        self.abort_reason: str | None = None
        self.survivors: tuple[int, ...] = ()
        self.result: int | None = None
        self.rejections: list = []

    @property
    def stage(self) -> str:
        return FAKE_STAGES[min(self.index, len(FAKE_STAGES) - 1)]

    def start(self) -> dict[int, bytes]:
        return {cid: self.stage.encode() for cid in sorted(self.live)}

    def step(self, replies) -> dict[int, bytes]:
        stage = self.stage
        replies = {cid: bytes(reply) for cid, reply in replies.items()}  # bytes-like in, as secagg takes
        answered = {cid for cid, reply in replies.items() if cid in self.live and reply.startswith(stage.encode())}
        self.rejections += [(cid, stage, "unexpected reply") for cid in set(replies) - answered]
        if stage == "MaskedInputCollection":
            self.values = {cid: int(replies[cid][len(stage):]) for cid in answered}
            self.survivors = tuple(sorted(answered))
        self.live = answered
        if len(self.live) < self.threshold:
            self.done = self.aborted = True
            self.abort_reason = f"only {len(self.live)} clients left at {stage}, threshold {self.threshold}"
            return {}
        self.index += 1
        if self.index == len(FAKE_STAGES):
            self.done = True
            self.result = sum(self.values.values())
            return {}
        return {cid: self.stage.encode() for cid in sorted(self.live)}


class FakeClientRound:
    def __init__(self, client_id: int, value: int) -> None:
        self.client_id, self.value, self.stage = client_id, value, FAKE_STAGES[0]

    def handle(self, message: bytes) -> bytes:
        if bytes(message) != self.stage.encode():
            raise FakeRefusal(f"client {self.client_id} expected {self.stage}, got {bytes(message[:20])!r}")
        reply = self.stage.encode() + (str(self.value).encode() if self.stage == "MaskedInputCollection" else b"")
        self.stage = FAKE_STAGES[FAKE_STAGES.index(self.stage) + 1] if self.stage != "Unmasking" else "done"
        return reply


# --- the scripted world ----------------------------------------------------------------

CLIENT_PROCESSES = 4
WORLD = CLIENT_PROCESSES + 1
HOSTS = {1: (1, 5, 9), 2: (2, 6, 10), 3: (3, 7), 4: (4, 8)}  # 10 virtual clients
TIMEOUT_S = 2.0
SCHEDULE = {2: {"AdvertiseKeys": [5], "ShareKeys": [2, 7], "Unmasking": [8]}, 3: {"MaskedInputCollection": [1, 10]}}
ROUNDS = 8
GARBAGE_ROUND, FOREIGN_ROUND, KILL_ROUND, SILENT_ROUND = 4, 5, 6, 7


def value_of(client_id: int, round_idx: int) -> int:
    return 1000 * round_idx + client_id


def _serve(relay: ServerRelay, out_dir: Path) -> None:
    results = {}
    for round_idx in range(1, ROUNDS + 1):
        live_hosts = {rank: HOSTS[rank] for rank in relay.live}
        cohort = tuple(sorted(c for ids in live_hosts.values() for c in ids))
        if not cohort:
            break
        protocol = FakeServerRound(cohort, threshold=2)
        started = time.monotonic()
        outcome = server_stages(relay, live_hosts, protocol, round_idx=round_idx, cohort=cohort, timeout_s=TIMEOUT_S)
        results[round_idx] = {
            "outcome": outcome,
            "sum": protocol.result,
            "seconds": time.monotonic() - started,
            "dropped": dict(relay.dropped),
        }
    relay.close("test over", timeout_s=5.0)
    torch.save(results, out_dir / "server.pt")


def _misbehave(rank: int, round_idx: int, relay: ClientRelay) -> bool:
    """This process's scripted fault in this round, if any; True if it took the round over."""
    if (rank, round_idx) == (4, GARBAGE_ROUND):
        relay.receive(Kind.START)
        relay.receive(Kind.STAGE)
        relay.link.send_raw(bytes(HEADER_BYTES))
        return True
    if (rank, round_idx) == (3, FOREIGN_ROUND):
        start = relay.receive(Kind.START)
        stage = relay.receive(Kind.STAGE)
        relay.send(Frame(Kind.REPLY, start.round, stage.stage, {1: b"AdvertiseKeys"}))
        return True
    return False


def _participate(rank: int, relay: ClientRelay, out_dir: Path) -> None:
    plan = DropoutPlan(schedule=SCHEDULE)
    try:
        _rounds(rank, relay, plan)
        relay.receive(Kind.FINISH)
        outcome = "finished"
    except Evicted as exc:
        outcome = f"evicted: {exc}"
    except RelayError as exc:
        outcome = f"relay error: {exc}"
    relay.close(timeout_s=1.0)
    (out_dir / f"client{rank}.txt").write_text(outcome)


def _rounds(rank: int, relay: ClientRelay, plan: DropoutPlan) -> None:
    for round_idx in range(1, ROUNDS + 1):
        if _misbehave(rank, round_idx, relay):
            return

        def make_rounds(cohort, round_idx=round_idx):
            return {cid: FakeClientRound(cid, value_of(cid, round_idx)) for cid in HOSTS[rank] if cid in cohort}

        def drops(stage: str, cid: int, round_idx=round_idx) -> bool:
            if (rank, round_idx, stage) == (2, KILL_ROUND, "ShareKeys"):
                os._exit(3)  # dies mid-round, socket closes
            if (rank, round_idx, stage, cid) == (1, SILENT_ROUND, "MaskedInputCollection", HOSTS[1][0]):
                time.sleep(TIMEOUT_S + 1.5)  # answers far too late
            return plan.drops(round_idx, stage, cid)

        client_stages(relay, make_rounds, round_idx=round_idx, drops=drops, refusal=FakeRefusal)


def _worker(rank: int, store, out_dir: Path) -> None:
    if rank == 0:
        _serve(ServerRelay(store, list(HOSTS), max_body_bytes=1 << 20), out_dir)
    else:
        _participate(rank, ClientRelay(store, 0, timeout_s=60.0, rank=rank), out_dir)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("transport")
    exit_codes = run_world(__name__, _worker, WORLD, out_dir, timeout_s=120)
    server = torch.load(out_dir / "server.pt", weights_only=False)
    clients = {r: (out_dir / f"client{r}.txt").read_text() for r in HOSTS if (out_dir / f"client{r}.txt").exists()}
    return {"server": server, "clients": clients, "exit_codes": exit_codes}


def _survivor_sum(round_idx: int, survivors) -> int:
    return sum(value_of(c, round_idx) for c in survivors)


def test_batched_virtual_clients_give_the_exact_sum(world: dict) -> None:
    first = world["server"][1]
    assert first["outcome"].survivors == tuple(range(1, 11)) and not first["outcome"].aborted
    assert first["sum"] == _survivor_sum(1, range(1, 11))
    assert first["dropped"] == {}


def test_injected_dropouts_at_every_stage_leave_exactly_the_survivors(world: dict) -> None:
    second, third = world["server"][2]["outcome"], world["server"][3]["outcome"]
    assert second.dropped == {"AdvertiseKeys": (5,), "ShareKeys": (2, 7), "Unmasking": (8,)}
    # 8 answered MaskedInputCollection, so its input is in the sum even though it left later
    assert second.survivors == (1, 3, 4, 6, 8, 9, 10)
    assert world["server"][2]["sum"] == _survivor_sum(2, second.survivors)
    assert third.dropped == {"MaskedInputCollection": (1, 10)}
    assert world["server"][3]["sum"] == _survivor_sum(3, (2, 3, 4, 5, 6, 7, 8, 9))


def test_a_garbage_header_drops_its_process_and_the_round_goes_on(world: dict) -> None:
    result = world["server"][GARBAGE_ROUND]
    assert "malformed frame: bad magic" in result["dropped"][4]
    assert result["outcome"].survivors == (1, 2, 3, 5, 6, 7, 9, 10)
    assert result["sum"] == _survivor_sum(GARBAGE_ROUND, result["outcome"].survivors)


def test_a_reply_for_a_foreign_client_drops_the_sender(world: dict) -> None:
    result = world["server"][FOREIGN_ROUND]
    assert "replied at AdvertiseKeys for clients [1] it does not host" in result["dropped"][3]
    assert result["outcome"].survivors == (1, 2, 5, 6, 9, 10)


def test_a_killed_process_is_dropped_at_once_not_at_the_deadline(world: dict) -> None:
    result = world["server"][KILL_ROUND]
    assert "connection lost" in result["dropped"][2]
    assert result["outcome"].dropped["ShareKeys"] == (2, 6, 10)
    assert result["outcome"].survivors == (1, 5, 9)
    assert result["seconds"] < TIMEOUT_S  # the closed socket is seen at once
    assert world["exit_codes"][2] == 3


def test_a_silent_process_is_dropped_at_the_deadline_and_evicted(world: dict) -> None:
    result = world["server"][SILENT_ROUND]
    assert f"no REPLY round {SILENT_ROUND} MaskedInputCollection within {TIMEOUT_S:g} s" in result["dropped"][1]
    assert result["outcome"].aborted and "only 0 clients left" in result["outcome"].abort_reason
    assert TIMEOUT_S <= result["seconds"] < TIMEOUT_S + 1.0
    assert SILENT_ROUND + 1 not in world["server"]  # nobody left to run a round with
    assert world["clients"][1].startswith("evicted: the server dropped this process: no REPLY")
    assert world["exit_codes"][1] == 0


# --- issue 10: a client tries to kill the server (3 processes) --------------------------

ATTACK_ROUNDS = 3
BOMB_ROUND = 2
BOMB_BYTES = 1 << 40


def _attack_serve(relay: ServerRelay, out_dir: Path) -> None:
    relay.set_stage_limits({"ShareKeys": 64 * 1024})
    rounds = {}
    for round_idx in range(1, ATTACK_ROUNDS + 1):
        for rank in relay.live:
            relay.send(rank, Frame(Kind.STAGE, round_idx, "ShareKeys", {rank: b"ask"}))
        rounds[round_idx] = sorted(relay.gather(list(relay.live), Kind.REPLY, round_idx, "ShareKeys", 30.0))
    summary = {"rounds": rounds, "dropped": dict(relay.dropped)}
    deadline = time.monotonic() + 30.0
    while not relay.refused and time.monotonic() < deadline:  # the impostor's claim may come late
        time.sleep(0.05)
    summary["refused"] = list(relay.refused)
    relay.close("attack test over", timeout_s=10.0)
    torch.save(summary, out_dir / "attack_server.pt")  # the server lived to write its summary


def _attack_client(rank: int, relay: ClientRelay, world: World, store_port: int, out_dir: Path) -> None:
    outcome = "finished"
    try:
        while (frame := relay.receive(Kind.STAGE, Kind.FINISH)).kind == Kind.STAGE:
            if rank == 2 and frame.round == BOMB_ROUND:
                _attack(relay, world, store_port, frame, out_dir)
                continue
            relay.send(Frame(Kind.REPLY, frame.round, frame.stage, {rank: b"ok"}))
    except Evicted as exc:
        outcome = f"evicted: {exc}"
    except RelayError as exc:
        outcome = f"relay error: {exc}"
    relay.close(timeout_s=5.0)
    (out_dir / f"attack_client{rank}.txt").write_text(outcome)


def _attack(relay: ClientRelay, world: World, store_port: int, stage: Frame, out_dir: Path) -> None:
    """Rank 2's round: claim rank 1 on a second connection, write a gloo op that aborts a
    gloo receiver (an unbound-buffer send nobody posted a receive for) and garbage on every
    other socket this process holds, then announce a 2^40-byte reply on the relay."""
    import psutil

    impostor = connect_to_server(world.store, 1, timeout_s=30.0)
    impostor.settimeout(30.0)
    told = b""
    while chunk := impostor.recv(4096):
        told += chunk
    (out_dir / "impostor.txt").write_bytes(told)
    relay_port = relay.link._sock.getsockname()[1]
    others = [c for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.status == "ESTABLISHED" and c.laddr.port != relay_port]
    gloo_op = struct.pack("<6Q", 48 + 100, 1, 0x7E1, 0, 100, 0) + bytes(100)
    for connection in others:
        os.write(connection.fd, gloo_op + b"\xff" * 4096)
    (out_dir / "other_sockets.txt").write_text(" ".join(str(c.raddr.port) for c in others))
    relay.link.send_raw(_header(stage.round, stage.stage, BOMB_BYTES))


def _header(round_idx: int, stage: str, body_bytes: int) -> bytes:
    data = bytearray(encode_frame(Frame(Kind.REPLY, round_idx, stage))[:HEADER_BYTES].numpy().tobytes())
    struct.pack_into(">Q", data, 16, body_bytes)
    return bytes(data)


def _attack_entry(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank of the attack world, joined as fedsim joins it (:func:`init_world`)."""
    torch.set_num_threads(1)
    world = init_world(rank=rank, world_size=world_size, local_rank=rank, init_method=f"tcp://127.0.0.1:{port}", timeout_s=60.0)
    try:
        if rank == 0:
            _attack_serve(ServerRelay(world.store, [1, 2], max_body_bytes=1 << 20), Path(out_dir))
        else:
            _attack_client(rank, ClientRelay(world.store, 0, timeout_s=60.0, rank=rank), world, port, Path(out_dir))
    except BaseException:
        (Path(out_dir) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        shutdown()


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("attack")
    port = free_port()
    mp.get_context("forkserver").set_forkserver_preload([__name__])
    context = mp.start_processes(_attack_entry, args=(3, port, str(out_dir)), nprocs=3, join=False, start_method="forkserver")
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in context.processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in context.processes:
        if process.is_alive():
            process.kill()
    errors = {p.name: p.read_text() for p in out_dir.glob("error*.txt")}
    assert not errors, errors
    exit_codes = [p.exitcode for p in context.processes]
    assert (out_dir / "attack_server.pt").is_file(), f"the server wrote no summary; exit codes {exit_codes}"
    return {
        "exit_codes": exit_codes,
        "store_port": port,
        "server": torch.load(out_dir / "attack_server.pt", weights_only=False),
        "clients": {r: (out_dir / f"attack_client{r}.txt").read_text() for r in (1, 2)},
        "impostor": (out_dir / "impostor.txt").read_bytes(),
        "other_sockets": (out_dir / "other_sockets.txt").read_text().split(),
    }


def test_a_2_to_the_40_byte_header_drops_its_sender_and_the_server_finishes(attack: dict) -> None:
    server = attack["server"]
    assert attack["exit_codes"] == [0, 0, 0]  # the server process lived (gloo aborted it) and wrote its summary
    assert server["rounds"] == {1: [1, 2], 2: [1], 3: [1]}
    reason = server["dropped"][2]
    assert f"oversized frame: body length {BOMB_BYTES}" in reason
    assert "over the limit of 65536 bytes for REPLY at ShareKeys" in reason
    assert attack["clients"][1] == "finished"
    assert attack["clients"][2].startswith("evicted: the server dropped this process: oversized frame")


def test_a_second_connection_claiming_a_taken_rank_is_refused(attack: dict) -> None:
    assert any("claims rank 1, which is already connected" in why for why in attack["server"]["refused"])
    assert b"the relay refused this connection" in attack["impostor"]  # told so in an EVICT frame
    assert attack["server"]["rounds"][3] == [1]  # the honest rank 1 kept its link


def test_no_gloo_pair_is_left_for_a_client_to_abort_the_server_through(attack: dict) -> None:
    # rank 2 wrote a gloo unbound-buffer op and garbage on every socket it held besides the
    # relay: only the store's (a gloo group would have had a pair to rank 0, and died of it)
    assert attack["other_sockets"] == [str(attack["store_port"])]
    assert attack["exit_codes"][0] == 0 and attack["server"]["rounds"][3] == [1]
