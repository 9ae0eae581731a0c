"""Multi-process secure sum with the real protocol: 1 server + 3 processes hosting 10 clients.

(Round 8 swaps ``fedsim.secure_sum.exchange.ClientRound`` for a subclass that spoils some replies,
inside the client processes only: the real driver with forged messages.)

One world for the module (process start-up dominates the cost) runs a scripted list of
rounds over gloo on 127.0.0.1: no dropouts, a dropout injected at each protocol stage,
a seeded dropout rate, tampered messages, SecAgg+ and a 64-bit ring, an abort, and a
process that dies mid-round. The server saves what it returned; the tests recompute
every client's encoded input (the rounding coins are seeded here) and demand the exact
decoded sum of the survivors' codes, bit for bit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import fedsim.secure_sum.exchange as secure_sum_module
from fedsim.dp.randomness import SecretRandom
from fedsim.secure_sum.dropouts import DropoutPlan
from fedsim.transport.vocabulary import Kind
from fedsim.transport.relay import ClientRelay, Evicted, RelayError, ServerRelay
from fedsim.secure_sum.config import SecureSumConfig
from fedsim.secure_sum.exchange import client_secure_sum, server_secure_sum
from secagg.encoding import as_ring_array
from secagg.protocol import ClientRound
from tests.support.process_world import run_world

HOSTS = {1: (1, 4, 7, 10), 2: (2, 5, 8), 3: (3, 6, 9)}
COHORT = tuple(range(1, 11))
WORLD = len(HOSTS) + 1
DIM = 4099  # not a multiple of the AES block: exercises the keystream tail
SESSION = bytes.fromhex("5e55104d0123456789abcdef00112233")
BASE = SecureSumConfig(clip_range=2.0, threshold=4, timeout_s=20.0)


@dataclass(frozen=True)
class Script:
    """One round: its settings, injected dropouts and faults, and what must come out."""

    config: SecureSumConfig = BASE
    schedule: dict = field(default_factory=dict)  # stage -> client ids (this round)
    rate: float = 0.0
    tamper: dict = field(default_factory=dict)  # (stage, client) -> how its reply is spoiled
    dies: tuple | None = None  # (rank, stage): the process exits when that stage arrives
    malicious: tuple = ()  # clients that send garbage share ciphertexts to every neighbour


SCRIPTS = {
    1: Script(),
    2: Script(schedule={"AdvertiseKeys": [3, 10]}),
    3: Script(schedule={"ShareKeys": [1, 6]}),
    4: Script(schedule={"MaskedInputCollection": [2, 9]}),
    5: Script(config=SecureSumConfig(clip_range=2.0, threshold=4, consistency_check=True),
              schedule={"ConsistencyCheck": [4], "Unmasking": [7]}),
    6: Script(schedule={"Unmasking": [5, 8]}),
    7: Script(rate=0.1),
    8: Script(tamper={("MaskedInputCollection", 2): "truncate", ("ShareKeys", 5): "replay"}),
    9: Script(config=SecureSumConfig(clip_range=2.0, graph="sparse", neighbours=4, threshold=3)),
    10: Script(config=SecureSumConfig(clip_range=2.0, modulus_bits=64, threshold=4)),
    11: Script(schedule={"ShareKeys": [1, 2, 3, 4, 5, 6, 7]}),  # 3 left, threshold 4: abort
    12: Script(malicious=(5,)),
    13: Script(dies=(3, "MaskedInputCollection")),
}
ROUNDS = tuple(SCRIPTS)


def client_update(client_id: int, round_idx: int) -> torch.Tensor:
    """Known float update of a client; some entries exceed the clip range."""
    gen = torch.Generator().manual_seed(10_000 * round_idx + client_id)
    update = torch.randn(DIM, generator=gen) * 1.5
    update[:8] = torch.tensor([2.0, -2.0, 5.0, -5.0, 1.999, -1.999, 0.0, 1e-9])
    return update


def rounding_random(rank: int, round_idx: int) -> SecretRandom:
    """Rounding coins under a fixed key, so the test can recompute every client's encoded input."""
    return SecretRandom(key=(777 + 100 * round_idx + rank).to_bytes(32, "little"))


def encoded_inputs(round_idx: int, asked=COHORT) -> dict[int, np.ndarray]:
    """The code of every client ``asked`` for input, drawn in the order its process draws
    them: sorted hosted ids, only those still in the round at MaskedInputCollection."""
    codec = SCRIPTS[round_idx].config.codec(len(COHORT))
    codes = {}
    for rank, hosted in HOSTS.items():
        rounding = rounding_random(rank, round_idx)
        for cid in (c for c in hosted if c in asked):
            codes[cid] = as_ring_array(codec.encode(client_update(cid, round_idx), rounding.key())).copy()
    return codes


def expected_sum(round_idx: int, survivors, asked) -> torch.Tensor:
    codes = encoded_inputs(round_idx, asked)
    total = np.sum([codes[c] for c in survivors], axis=0, dtype=codes[survivors[0]].dtype)  # wraps mod 2^k
    return SCRIPTS[round_idx].config.codec(len(COHORT)).decode_sum(total)


# --- the world -------------------------------------------------------------------------


def _spoil(reply: bytes, how: str) -> bytes:
    if how == "truncate":
        return reply[:-1]
    round_field = slice(24, 32)  # the header's round number: make it last round's
    stale = (int.from_bytes(reply[round_field], "big") - 1).to_bytes(8, "big")
    return reply[: round_field.start] + stale + reply[round_field.stop :]


class TamperedRound(ClientRound):
    """A real ClientRound whose reply at one stage is spoiled on the way out (round 8)."""

    def handle(self, message: bytes) -> bytes:
        stage = self.stage
        reply = super().handle(message)
        how = SCRIPTS[8].tamper.get((stage, self.client_id))
        return _spoil(reply, how) if how else reply


class GarbageSealing(ClientRound):
    """A real ClientRound whose share ciphertexts are random bytes when it is malicious (round 12)."""

    def _seal(self, peer: int, send_key: bytes, b_share: bytes, sk_share: bytes) -> bytes:
        sealed = super()._seal(peer, send_key, b_share, sk_share)
        return os.urandom(len(sealed)) if self.client_id in SCRIPTS[12].malicious else sealed


def _serve(relay: ServerRelay, out_dir: Path) -> None:
    results = {}
    for round_idx, script in SCRIPTS.items():
        hosts = {rank: HOSTS[rank] for rank in relay.live}
        cohort = tuple(sorted(c for ids in hosts.values() for c in ids))
        started = time.monotonic()
        result = server_secure_sum(
            relay, hosts, session=SESSION, round_idx=round_idx, cohort=cohort, dim=DIM,
            config=script.config, keep_transcript=round_idx == 1,
        )
        results[round_idx] = {
            "outcome": result.outcome,
            "total": result.total,
            "rejections": result.rejections,
            "transcript": [(stage, sender, bytes(data)) for stage, sender, data in result.transcript],
            "seconds": time.monotonic() - started,
            "dropped": dict(relay.dropped),
        }
    relay.close("test over", timeout_s=10.0)
    torch.save(results, out_dir / "server.pt")


def _participate(rank: int, relay: ClientRelay) -> None:
    for round_idx, script in SCRIPTS.items():
        secure_sum_module.ClientRound = (
            TamperedRound if script.tamper else GarbageSealing if script.malicious else ClientRound
        )
        plan = DropoutPlan(rate=script.rate, schedule={round_idx: script.schedule}, seed=round_idx)

        class Dying(DropoutPlan):
            def drops(self, r: int, stage: str, cid: int) -> bool:
                if script.dies == (rank, stage):
                    os._exit(5)
                return plan.drops(r, stage, cid)

        client_secure_sum(
            relay,
            HOSTS[rank],
            lambda ids, r=round_idx: {cid: client_update(cid, r) for cid in ids},
            session=SESSION,
            round_idx=round_idx,
            dim=DIM,
            config=script.config,
            rounding=rounding_random(rank, round_idx),
            dropouts=Dying(rate=plan.rate, schedule=plan.schedule, seed=plan.seed) if script.dies else plan,
        )
    try:
        relay.receive(Kind.FINISH)
    except (Evicted, RelayError):
        pass
    relay.close()


def _worker(rank: int, store, out_dir: Path) -> None:
    if rank == 0:
        _serve(ServerRelay(store, list(HOSTS), max_body_bytes=1 << 24), out_dir)
    else:
        _participate(rank, ClientRelay(store, 0, timeout_s=120.0, rank=rank))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("secure_sum")
    exit_codes = run_world(__name__, _worker, WORLD, out_dir, timeout_s=240)
    return {"server": torch.load(out_dir / "server.pt", weights_only=False), "exit_codes": exit_codes}


# --- what the server returned ------------------------------------------------------------


def _check_exact(world: dict, round_idx: int, survivors: tuple[int, ...]) -> None:
    result = world["server"][round_idx]
    outcome = result["outcome"]
    assert not outcome.aborted, outcome.abort_reason
    assert outcome.survivors == survivors
    got = result["total"]
    assert got.dtype == torch.float32 and got.shape == (DIM,)
    # clients that left before MaskedInputCollection were never asked for (nor encoded) an input
    before = set(outcome.dropped.get("AdvertiseKeys", ())) | set(outcome.dropped.get("ShareKeys", ()))
    assert torch.equal(got, expected_sum(round_idx, survivors, set(COHORT) - before))


def test_ten_virtual_clients_on_three_processes_sum_exactly(world: dict) -> None:
    _check_exact(world, 1, COHORT)
    assert world["server"][1]["outcome"].dropped == {}


def test_sum_is_close_to_the_float_sum_of_clipped_updates(world: dict) -> None:
    float_sum = torch.stack([client_update(c, 1) for c in COHORT]).clamp(-2.0, 2.0).sum(0)
    step = 1.0 / BASE.codec(len(COHORT)).scale
    assert torch.allclose(world["server"][1]["total"], float_sum, rtol=0, atol=len(COHORT) * step + 1e-6)


@pytest.mark.parametrize(
    ("round_idx", "stage", "survivors"),
    [
        (2, "AdvertiseKeys", (1, 2, 4, 5, 6, 7, 8, 9)),
        (3, "ShareKeys", (2, 3, 4, 5, 7, 8, 9, 10)),
        (4, "MaskedInputCollection", (1, 3, 4, 5, 6, 7, 8, 10)),
        (5, "ConsistencyCheck", COHORT),  # its input was in: dropping after that only costs shares
        (6, "Unmasking", COHORT),
    ],
)
def test_a_dropout_at_each_stage_leaves_the_exact_survivors_sum(world: dict, round_idx, stage, survivors) -> None:
    _check_exact(world, round_idx, survivors)
    assert world["server"][round_idx]["outcome"].dropped[stage] == tuple(SCRIPTS[round_idx].schedule[stage])


def test_a_seeded_dropout_rate_leaves_the_exact_survivors_sum(world: dict) -> None:
    plan = DropoutPlan(rate=0.1, seed=7)
    silent = {c for c in COHORT if any(plan.drops(7, s, c) for s in ("AdvertiseKeys", "ShareKeys", "MaskedInputCollection"))}
    outcome = world["server"][7]["outcome"]
    assert set(outcome.survivors) == set(COHORT) - silent
    _check_exact(world, 7, outcome.survivors)


def test_tampered_messages_are_rejected_naming_sender_stage_and_reason(world: dict) -> None:
    result = world["server"][8]
    reasons = {(sender, stage): reason for sender, stage, reason, _verdict in result["rejections"]}
    assert set(reasons) == {(2, "MaskedInputCollection"), (5, "ShareKeys")}
    assert "wrong round" in reasons[(5, "ShareKeys")]
    assert result["outcome"].dropped == {"ShareKeys": (5,), "MaskedInputCollection": (2,)}
    _check_exact(world, 8, (1, 3, 4, 6, 7, 8, 9, 10))
    assert result["dropped"] == {}  # the processes stay: only the clients are out of the round


def test_secagg_plus_graph_and_64_bit_ring_sum_exactly(world: dict) -> None:
    _check_exact(world, 9, COHORT)
    _check_exact(world, 10, COHORT)
    assert world["server"][10]["total"].dtype == torch.float32


def test_too_few_survivors_abort_the_round(world: dict) -> None:
    outcome = world["server"][11]["outcome"]
    assert outcome.aborted and outcome.survivors == () and "threshold 4" in outcome.abort_reason
    assert world["server"][11]["total"] is None


def test_a_client_sending_bad_share_ciphertexts_is_named_and_the_round_completes(world: dict) -> None:
    """The evaluation's attack over real processes: it used to abort every round and list
    honest clients as dropped. Now each honest neighbour accuses it with the channel key,
    the server checks, names it malicious and sums the other nine exactly."""
    result = world["server"][12]
    named = {(client, verdict) for client, _stage, _reason, verdict in result["rejections"]}
    assert named == {(5, "malicious")}
    assert all(stage == "ShareKeys" and "verified by the server" in reason for _, stage, reason, _ in result["rejections"])
    _check_exact(world, 12, tuple(c for c in COHORT if c != 5))
    assert result["dropped"] == {}  # its process stays: its other clients are honest


def test_a_process_dying_mid_round_drops_its_clients_and_the_sum_goes_on(world: dict) -> None:
    result = world["server"][13]
    assert "connection lost" in result["dropped"][3]
    assert result["outcome"].dropped["MaskedInputCollection"] == HOSTS[3]
    _check_exact(world, 13, (1, 2, 4, 5, 7, 8, 10))
    assert result["seconds"] < BASE.timeout_s  # seen at once, not at the deadline
    assert world["exit_codes"][3] == 5


def test_server_view_holds_no_unmasked_input(world: dict) -> None:
    transcript = world["server"][1]["transcript"]
    masked = [data for stage, _, data in transcript if stage == "MaskedInputCollection"]
    assert len(masked) == len(COHORT)
    for code in encoded_inputs(1).values():
        for message in masked:
            y = np.frombuffer(message[-4 * DIM:], dtype="<u4")
            distance = (y.astype(np.int64) - code.astype(np.int64) + 2**31) % 2**32 - 2**31
            assert (np.abs(distance) < 2**20).mean() < 0.01  # as for a uniform y
