"""The relay and the stage driver, against a tiny fake protocol (the contract, not secagg).

(Frames: tests/fedsim/transport/test_framing.py; dropout plans:
tests/fedsim/secure_sum/test_dropouts.py, both in-process.) One world of 1 server + 4 client
processes (gloo on 127.0.0.1) hosting 10 virtual clients runs a scripted sequence of
rounds: clean, injected dropouts, a garbage header, a reply for a foreign client, a
process killed mid-round, a process that stops answering. The server writes what it saw
to a file that the tests below inspect.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fedsim.secure_sum.dropouts import DropoutPlan
from fedsim.transport.framing import HEADER_BYTES, Frame
from fedsim.transport.vocabulary import Kind
from fedsim.transport.relay import FIRST_TAG, ClientRelay, Evicted, RelayError, ServerRelay
from fedsim.secure_sum.stages import client_stages, server_stages
from tests.support.gloo_world import run_world

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


def _misbehave(rank: int, round_idx: int, relay: ClientRelay, group) -> bool:
    """This process's scripted fault in this round, if any; True if it took the round over."""
    if (rank, round_idx) == (4, GARBAGE_ROUND):
        relay.receive(Kind.START)
        relay.receive(Kind.STAGE)
        dist.isend(torch.zeros(HEADER_BYTES, dtype=torch.uint8), dst=0, group=group, tag=FIRST_TAG)
        return True
    if (rank, round_idx) == (3, FOREIGN_ROUND):
        start = relay.receive(Kind.START)
        stage = relay.receive(Kind.STAGE)
        relay.send(Frame(Kind.REPLY, start.round, stage.stage, {1: b"AdvertiseKeys"}))
        return True
    return False


def _participate(rank: int, relay: ClientRelay, group, out_dir: Path) -> None:
    plan = DropoutPlan(schedule=SCHEDULE)
    try:
        _rounds(rank, relay, group, plan)
        relay.receive(Kind.FINISH)
        outcome = "finished"
    except Evicted as exc:
        outcome = f"evicted: {exc}"
    except RelayError as exc:
        outcome = f"relay error: {exc}"
    relay.close(timeout_s=1.0)
    (out_dir / f"client{rank}.txt").write_text(outcome)


def _rounds(rank: int, relay: ClientRelay, group, plan: DropoutPlan) -> None:
    for round_idx in range(1, ROUNDS + 1):
        if _misbehave(rank, round_idx, relay, group):
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


def _worker(rank: int, group, out_dir: Path) -> None:
    if rank == 0:
        _serve(ServerRelay(group, list(HOSTS), max_body_bytes=1 << 20), out_dir)
    else:
        _participate(rank, ClientRelay(group, 0, timeout_s=60.0), group, out_dir)


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
