"""The relay over real sockets, in one process: a ServerRelay in the test's thread, client
processes played by threads (honest ClientRelays, and attackers writing raw bytes).

The attacks of issue 10 ("a client can kill the server"): a header announcing 2^40 bytes,
10 MB at a stage whose limit is 64 KiB, a header then a stall, garbage instead of a
header, a second connection claiming a taken rank, a peer that never reads. Each time
the server drops (or refuses) exactly the attacker, names why, and goes on serving the
others. (The same in real processes: tests/integration/test_transport.py.)
"""

from __future__ import annotations

import datetime
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.distributed as dist

from fedsim.transport import relay as relay_module
from fedsim.transport.framing import (
    HEADER_BYTES,
    Frame,
    decode_body,
    decode_header,
    encode_frame,
)
from fedsim.transport.relay import (
    ADDRESS_KEY,
    HOST_VARIABLE,
    TERMINAL_MAX_BODY_BYTES,
    ClientRelay,
    Evicted,
    RelayError,
    ServerRelay,
    choose_relay_host,
    connect_to_server,
)
from fedsim.transport.vocabulary import Kind

TIMEOUT = datetime.timedelta(seconds=20)
KIB, MIB = 1024, 1024 * 1024

Client = Callable[[dist.Store, int, dict], None]


# -- the world: a store, a server, client threads ----------------------------------------


@contextmanager
def relay_world(
    clients: dict[int, Client], max_body_bytes: int = MIB, connect_timeout_s: float = 20.0, ranks: tuple[int, ...] = (1, 2)
) -> Iterator[tuple[ServerRelay, dict, dist.Store]]:
    """A ServerRelay expecting ``ranks``, ``clients`` (rank -> what that client thread
    does) and the outcome each recorded; at the end the server is closed, threads joined."""
    master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    outcomes: dict = {}

    def run(rank: int, client: Client) -> None:
        store = dist.TCPStore("127.0.0.1", master.port, is_master=False, timeout=TIMEOUT)
        try:
            client(store, rank, outcomes)
        except Exception as exc:  # noqa: BLE001 - whatever a client thread saw, for the test to read
            outcomes.setdefault(rank, f"raised {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(rank, client), daemon=True) for rank, client in clients.items()]
    for thread in threads:
        thread.start()
    server = ServerRelay(master, ranks, max_body_bytes, connect_timeout_s=connect_timeout_s)
    try:
        yield server, outcomes, master
    finally:
        server.close("test over", timeout_s=5.0)
        for thread in threads:
            thread.join(15.0)
        assert not any(thread.is_alive() for thread in threads), "a client thread did not end"


def echo_client(store: dist.Store, rank: int, outcomes: dict) -> None:
    """Honest: answers each STAGE with a REPLY carrying the same entries, until FINISH."""
    relay = ClientRelay(store, 0, timeout_s=20.0, rank=rank)
    try:
        while (frame := relay.receive(Kind.STAGE, Kind.FINISH)).kind == Kind.STAGE:
            relay.send(Frame(Kind.REPLY, frame.round, frame.stage, {rank: bytes(frame.entries[rank])}))
        outcomes[rank] = "finished"
    except Evicted as exc:
        outcomes[rank] = f"evicted: {exc}"
    relay.close()


def attacker(act: Callable[[ClientRelay, Frame], None]) -> Client:
    """A client that connects normally, then answers its first STAGE with ``act``, then
    waits to hear what the server made of it."""

    def client(store: dist.Store, rank: int, outcomes: dict) -> None:
        relay = ClientRelay(store, 0, timeout_s=20.0, rank=rank)
        act(relay, relay.receive(Kind.STAGE))
        try:
            relay.receive(Kind.STAGE, Kind.FINISH)
            outcomes[rank] = "not evicted"
        except Evicted as exc:
            outcomes[rank] = f"evicted: {exc}"
        except RelayError as exc:
            outcomes[rank] = f"relay error: {exc}"
        relay.close(timeout_s=2.0)

    return client


def wait_for(outcomes: dict, rank: int, timeout_s: float = 10.0) -> str:
    """What client thread ``rank`` recorded, once it has (the server keeps going meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while rank not in outcomes and time.monotonic() < deadline:
        time.sleep(0.02)
    return outcomes.get(rank, "nothing recorded")


def header(kind: Kind, round_idx: int, stage: str, body_bytes: int) -> bytes:
    """A well-formed header announcing ``body_bytes`` (whatever follows it)."""
    data = bytearray(encode_frame(Frame(kind, round_idx, stage))[:HEADER_BYTES].numpy().tobytes())
    struct.pack_into(">Q", data, 16, body_bytes)
    return bytes(data)


def ask(server: ServerRelay, ranks, round_idx: int, stage: str, size: int = 16, timeout_s: float = 20.0) -> dict[int, Frame]:
    """One STAGE to each rank (a ``size``-byte entry for it) and their REPLYs."""
    payloads = {rank: os.urandom(size) for rank in ranks}
    for rank in ranks:
        server.send(rank, Frame(Kind.STAGE, round_idx, stage, {rank: payloads[rank]}))
    replies = server.gather(list(ranks), Kind.REPLY, round_idx, stage, timeout_s)
    for rank, frame in replies.items():
        assert bytes(frame.entries[rank]) == payloads[rank]
    return replies


def read_frame(sock: socket.socket) -> Frame:
    """One frame from a raw socket (what a refused connection is told)."""
    sock.settimeout(10.0)

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, f"connection closed after {len(data)} of {n} bytes"
            data += chunk
        return data

    parsed = decode_header(exactly(HEADER_BYTES), MIB)
    return decode_body(parsed, torch.frombuffer(bytearray(exactly(parsed.body_bytes)), dtype=torch.uint8))


# -- (f) the ordinary path ----------------------------------------------------------------


def test_frames_round_trip_in_order_including_a_4_mb_body() -> None:
    with relay_world({1: echo_client, 2: echo_client}, max_body_bytes=8 * MIB) as (server, outcomes, _):
        for round_idx in range(1, 21):
            assert set(ask(server, (1, 2), round_idx, "ShareKeys", size=round_idx * 100)) == {1, 2}
        assert set(ask(server, (1, 2), 21, "MaskedInputCollection", size=4 * MIB)) == {1, 2}
        assert server.dropped == {} and server.refused == [] and server.live == (1, 2)
    assert outcomes == {1: "finished", 2: "finished"}


# -- (a) (b) oversized frames ---------------------------------------------------------------


def test_a_header_announcing_2_to_the_40_bytes_drops_the_sender_named_with_the_limit() -> None:
    bomb = attacker(lambda relay, stage: relay.link.send_raw(header(Kind.REPLY, stage.round, stage.stage, 1 << 40)))
    with relay_world({1: echo_client, 2: bomb}) as (server, outcomes, _):
        assert set(ask(server, (1, 2), 1, "ShareKeys")) == {1}
        reason = server.dropped[2]
        assert "oversized frame" in reason and f"body length {1 << 40}" in reason
        assert f"over the limit of {MIB} bytes for REPLY at ShareKeys" in reason
        assert set(ask(server, server.live, 2, "ShareKeys")) == {1}  # the server goes on
        assert wait_for(outcomes, 2).startswith("evicted: the server dropped this process: oversized frame")
    assert outcomes[1] == "finished"


def test_10_mb_at_a_stage_limited_to_64_kib_is_refused_before_its_body_is_read() -> None:
    flood = attacker(lambda relay, stage: relay.send(Frame(Kind.REPLY, stage.round, stage.stage, {2: bytes(10 * MIB)})))
    with relay_world({1: echo_client, 2: flood}, max_body_bytes=16 * MIB) as (server, outcomes, _):
        server.set_stage_limits({"ShareKeys": 64 * KIB})
        assert server.body_limit(Kind.REPLY, "ShareKeys") == 64 * KIB
        assert server.body_limit(Kind.REPLY, "MaskedInputCollection") == 16 * MIB
        assert server.body_limit(Kind.BYE, "") == TERMINAL_MAX_BODY_BYTES
        assert set(ask(server, (1, 2), 1, "ShareKeys")) == {1}
        assert "over the limit of 65536 bytes for REPLY at ShareKeys" in server.dropped[2]
        assert set(ask(server, server.live, 1, "MaskedInputCollection", size=4 * MIB)) == {1}  # its own limit
        with pytest.raises(RelayError, match="over the limit of 65536"):  # the dropped link stays refused
            server.links[2].receive(0.0)
        assert wait_for(outcomes, 2).startswith("evicted: the server dropped this process: oversized frame")
    assert outcomes[1] == "finished"


def test_stage_limits_are_checked_and_name_the_field() -> None:
    limits = relay_module.BodyLimits(MIB)
    with pytest.raises(ValueError, match="stage='Nope'"):
        limits.set_stages({"Nope": 5})
    with pytest.raises(ValueError, match="stage limit for ShareKeys=0"):
        limits.set_stages({"ShareKeys": 0})
    with pytest.raises(ValueError, match="max_body_bytes=-1"):
        relay_module.BodyLimits(-1)
    limits.set_stages({"": 2 * KIB, "ShareKeys": 4 * MIB})
    assert limits(Kind.REPORT, "") == 2 * KIB
    assert limits(Kind.REPLY, "ShareKeys") == MIB  # never above the run-wide cap
    assert limits(Kind.FAIL, "") == TERMINAL_MAX_BODY_BYTES


# -- (c) (d) stalls and garbage ---------------------------------------------------------------


def test_a_header_then_a_stall_is_dropped_at_the_deadline_saying_how_far_it_got() -> None:
    stall = attacker(lambda relay, stage: relay.link.send_raw(header(Kind.REPLY, stage.round, stage.stage, 1000) + bytes(10)))
    with relay_world({1: echo_client, 2: stall}) as (server, outcomes, _):
        assert set(ask(server, (1, 2), 1, "ShareKeys", timeout_s=0.5)) == {1}
        assert server.dropped[2] == (
            "no REPLY round 1 ShareKeys within 0.5 s (stalled: REPLY round 1 ShareKeys body: 10 of 1000 bytes arrived)"
        )
        assert set(ask(server, server.live, 2, "ShareKeys")) == {1}
    assert outcomes[1] == "finished" and outcomes[2].startswith("evicted: the server dropped this process: no REPLY")


def test_half_a_header_then_a_stall_is_dropped_at_the_deadline() -> None:
    stall = attacker(lambda relay, stage: relay.link.send_raw(header(Kind.REPLY, stage.round, stage.stage, 100)[:10]))
    with relay_world({1: echo_client, 2: stall}) as (server, _, _):
        assert set(ask(server, (1, 2), 1, "ShareKeys", timeout_s=0.5)) == {1}
        assert "(stalled: a frame header: 10 of 24 bytes arrived)" in server.dropped[2]


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: fedsim\r\n\r\n", "malformed frame: bad magic b'GET '"),
        (bytes(HEADER_BYTES), "malformed frame: bad magic"),
        (header(Kind.REPLY, 1, "ShareKeys", 3), "malformed frame: body length 3"),
        (header(Kind.REPLY, 1, "ShareKeys", 8) + b"\x00\x00\x00\x00XXXX", "malformed frame: body does not end with the end marker"),
    ],
)
def test_garbage_instead_of_a_frame_drops_the_sender_named(garbage: bytes, reason: str) -> None:
    with relay_world({1: echo_client, 2: attacker(lambda relay, stage: relay.link.send_raw(garbage))}) as (server, outcomes, _):
        assert set(ask(server, (1, 2), 1, "ShareKeys")) == {1}
        assert reason in server.dropped[2]
        assert set(ask(server, server.live, 2, "ShareKeys")) == {1}
    assert outcomes[1] == "finished"


# -- (e) connections: duplicates, strangers, absentees -------------------------------------------


def test_a_second_connection_claiming_a_taken_rank_is_refused_and_the_rank_keeps_working(monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "HELLO_TIMEOUT_S", 0.5)
    with relay_world({1: echo_client, 2: echo_client}) as (server, outcomes, store):
        assert set(ask(server, (1, 2), 1, "ShareKeys")) == {1, 2}
        impostor = connect_to_server(store, 1, timeout_s=5.0)
        told = read_frame(impostor)
        assert told.kind == Kind.EVICT and b"claims rank 1, which is already connected" in bytes(told.entries[0])
        stranger = connect_to_server(store, 7, timeout_s=5.0)
        assert b"claims rank 7, not a client rank of this run (1..2)" in bytes(read_frame(stranger).entries[0])
        host, _, port = store.get(ADDRESS_KEY).decode().rpartition(":")
        with socket.create_connection((host, int(port))) as junk:
            junk.sendall(b"\xff" * 16)
            assert b"not a relay hello" in bytes(read_frame(junk).entries[0])
        with socket.create_connection((host, int(port))) as mute:
            assert b"no hello within 0.5 s" in bytes(read_frame(mute).entries[0])
        assert len(server.refused) == 4 and "claims rank 1, which is already connected" in server.refused[0]
        assert set(ask(server, (1, 2), 2, "ShareKeys")) == {1, 2}  # the real rank 1 is untouched
        assert server.dropped == {}
        impostor.close()
        stranger.close()
    assert outcomes == {1: "finished", 2: "finished"}


def test_a_client_that_never_connects_is_dropped_named_and_cannot_come_late() -> None:
    with relay_world({1: echo_client}, connect_timeout_s=0.5) as (server, outcomes, store):
        assert server.live == (1,)
        assert server.dropped[2] == f"did not connect to the relay at {server.address} within 0.5 s"
        late = connect_to_server(store, 2, timeout_s=5.0)
        assert b"claims rank 2 after the start-up (did not connect" in bytes(read_frame(late).entries[0])
        late.close()
        assert set(ask(server, server.live, 1, "ShareKeys")) == {1}
    assert outcomes[1] == "finished"


# -- a peer that does not read -------------------------------------------------------------------


def mute_client(store: dist.Store, rank: int, outcomes: dict) -> None:
    """Connects, then never reads a byte (until the server cuts it off)."""
    sock = connect_to_server(store, rank, timeout_s=10.0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline and not outcomes.get("done"):
        time.sleep(0.05)
    sock.close()
    outcomes[rank] = "gone"


def test_a_peer_that_stops_reading_is_cut_off_and_never_blocks_the_server(monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "SEND_STALL_S", 0.5)
    with relay_world({1: echo_client, 2: mute_client}, max_body_bytes=8 * MIB) as (server, outcomes, _):
        for _ in range(8):  # far more than the socket buffers hold: send() must still return
            server.send(2, Frame(Kind.STAGE, 1, "ShareKeys", {2: bytes(4 * MIB)}))
        assert set(ask(server, (1,), 1, "ShareKeys")) == {1}
        replies = server.gather([2], Kind.REPLY, 1, "ShareKeys", 10.0)
        assert replies == {} and "read nothing for 0.5 s" in server.dropped[2]
        outcomes["done"] = True
    assert outcomes[1] == "finished"


def test_a_peer_that_lets_frames_pile_up_is_cut_off(monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "MAX_QUEUED_FRAMES", 4)
    with relay_world({1: echo_client, 2: mute_client}, max_body_bytes=8 * MIB) as (server, outcomes, _):
        for _ in range(16):
            server.send(2, Frame(Kind.STAGE, 1, "ShareKeys", {2: bytes(2 * MIB)}))
        assert server.gather([2], Kind.REPLY, 1, "ShareKeys", 10.0) == {}
        assert "rank 2 does not read: 4 frames wait for it" in server.dropped[2]
        outcomes["done"] = True


# -- addresses -------------------------------------------------------------------------------------


def test_the_relay_binds_where_the_store_is_and_honours_the_override(monkeypatch) -> None:
    monkeypatch.delenv(HOST_VARIABLE, raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT)
    assert choose_relay_host(dist.PrefixStore("fedsim", store)) == ("127.0.0.1", "127.0.0.1")
    monkeypatch.setattr(socket, "getfqdn", lambda: "node7.cluster.invalid")
    assert choose_relay_host(dist.HashStore()) == (None, "node7.cluster.invalid")  # no store host, no MASTER_ADDR
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert choose_relay_host(dist.HashStore()) == ("127.0.0.1", "127.0.0.1")
    monkeypatch.setenv("MASTER_ADDR", socket.gethostname())  # multi-node: other nodes use the name
    assert choose_relay_host(dist.HashStore()) == (None, socket.gethostname())
    monkeypatch.setenv(HOST_VARIABLE, "relay.invalid")  # another host's name (NAT): published, bind all
    assert choose_relay_host(store) == (None, "relay.invalid")
    monkeypatch.setenv(HOST_VARIABLE, "localhost")
    assert choose_relay_host(store) == ("localhost", "localhost")


def test_a_tampered_address_in_the_store_is_a_named_relay_error() -> None:
    store = dist.HashStore()
    store.set(ADDRESS_KEY, "no-port-here")
    with pytest.raises(RelayError, match="store key 'relay/address'='no-port-here' is not host:port"):
        connect_to_server(store, 1, timeout_s=1.0)
    with pytest.raises(RelayError, match="no relay address in the store within 0.2 s"):
        connect_to_server(dist.HashStore(), 1, timeout_s=0.2)
