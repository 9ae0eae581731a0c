"""The relay: framed point-to-point messages between the server and client processes.

Every message of a run goes between rank 0 (the server) and one client process, never
between two clients: the server relays what clients send one another (the encrypted
Shamir shares of Bonawitz et al., CCS 2017, Fig. 4) inside its own frames. Each
:class:`~fedsim.transport.framing.Frame` travels over one TCP connection per client
process, as one ``sendall`` of header and body (``TCP_NODELAY``: a small frame is one
segment, not delayed).

**Why plain sockets.** The relay must survive any byte sequence a client process sends
(docs/architecture.md, "Process model"). gloo point-to-point could not: it *terminates
the receiving process* (``gloo::EnforceNotMet``, SIGABRT) when a peer sends more bytes
than the posted receive, and its receives can be neither polled nor cancelled. With a
socket the relay reads the fixed 24-byte header first and checks the announced length
against the limit for that frame's (kind, stage) (:meth:`ServerRelay.set_stage_limits`)
*before* it allocates or reads the body: no buffer larger than the limit is ever
allocated, and a peer that announces more, or sends a malformed header, is dropped and
named. pyzmq's ``ZMQ_MAXMSGSIZE`` would also bound a message, but only by one size per
socket (not per stage), it drops the offending peer silently (the server could not say
who and why), and it is a new compiled dependency; the standard library suffices.

torch.distributed stays for process launch and rendezvous: the server listens on an
ephemeral port and publishes ``host:port`` in the world's store
(:attr:`fedsim.transport.world.World.store`, key :data:`ADDRESS_KEY`); each client
process reads it, connects and sends a hello naming its rank. The server accepts exactly
one connection per expected client rank within the start-up timeout: a connection
claiming a rank that is taken, unknown or already dropped is refused (sent EVICT, closed)
and logged in :attr:`ServerRelay.refused`; a rank that never connects is dropped and
named. A rank claim is not authenticated (every process of the world can read the store,
and whoever reaches the port may claim a rank first): the identity keys of the active
threat model authenticate clients, not this transport.

**Which address.** Published: :envvar:`FEDSIM_RELAY_HOST` as is, when set; else the
store's host (MASTER_ADDR under torchrun, 127.0.0.1 for a local run), or MASTER_ADDR,
when it is an address of this machine; else this machine's fully qualified name, which
the other nodes must resolve (set FEDSIM_RELAY_HOST if they cannot, or behind NAT).
Bound: that address when it is a loopback one (``localhost``, ``127.0.0.1``: a
one-machine run stays off the network), else every interface (a host name that resolves
to 127.0.1.1 here may still be the other nodes' way in). Like torch's own store, the
port is open to whoever can reach it; only hellos for the expected ranks are accepted.

**Deadlines are the relay's own.** Each peer gets a :class:`PeerLink`: a receiver thread
that reads frames with bounded reads (socket timeouts of :data:`POLL_S`, so it notices a
closed link) and a sender thread fed by a queue. :meth:`PeerLink.send` never blocks the
caller; a peer that reads nothing for :data:`SEND_STALL_S` while frames wait for it, or
lets :data:`MAX_QUEUED_FRAMES` pile up, is cut off. A peer that dies closes its socket:
the link reports it at once. A peer that is silent past a deadline, or sent a header and
stalls mid-body, is dropped at the deadline (the reason says how far it got); the
server's links hold at most :data:`SERVER_INBOX_FRAMES` unread frames (then reading
pauses), so a flooding client costs bounded memory. The run's end closes every socket
(FINISH, EVICT, BYE, FAIL end a link in their direction).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fedsim.errors import FedsimError
from fedsim.transport.framing import (
    HEADER_BYTES,
    BodyLimit,
    Frame,
    FrameError,
    FrameTooLarge,
    decode_body,
    decode_header,
    encode_frame,
)
from fedsim.transport.vocabulary import FRAME_STAGES, TERMINAL_KINDS, Kind

__all__ = [
    "ADDRESS_KEY",
    "CLIENT_MAX_BODY_BYTES",
    "HOST_VARIABLE",
    "TERMINAL_MAX_BODY_BYTES",
    "BodyLimits",
    "ClientRelay",
    "Evicted",
    "LinkClosed",
    "PeerLink",
    "RelayError",
    "RelayTimeout",
    "RunFinished",
    "ServerRelay",
    "choose_relay_host",
]

logger = logging.getLogger(__name__)

ADDRESS_KEY = "relay/address"
"""Store key under which the server publishes ``host:port`` (one relay per world)."""

HOST_VARIABLE = "FEDSIM_RELAY_HOST"
"""Environment variable: the host name or address clients use to reach the server's relay."""

CLIENT_MAX_BODY_BYTES = 1 << 36
"""Largest frame body a client accepts from the server (the server is not the threat here)."""

TERMINAL_MAX_BODY_BYTES = 8192
"""Largest BYE or FAIL body the server accepts (a FAIL carries at most 4 KiB of error)."""

POLL_S = 0.5
"""How often a link's blocked thread looks whether the link was closed."""

SEND_STALL_S = 60.0
"""A peer that reads nothing for this long while a frame waits for it is cut off."""

MAX_QUEUED_FRAMES = 64
"""Frames waiting to be sent to one peer; one more means the peer does not drain."""

SERVER_INBOX_FRAMES = 8
"""Unread frames a server link holds before it stops reading (a client sends one per request)."""

HELLO_TIMEOUT_S = 10.0
"""A new connection must send its hello within this long."""

MAX_PENDING_HELLOS = 64
"""Connections awaiting their hello at once; more are refused."""

DROP_LINGER_S = 5.0
"""How long a dropped peer's connection stays open for its BYE after the EVICT."""

DROPPED_FLUSH_S = 1.0
"""At the run's end, how long (in all) the EVICTs still queued for dropped peers may take to be written."""

MAX_REFUSED_RECORDS = 1000
"""Refused connections kept in :attr:`ServerRelay.refused` (later ones are only logged)."""

_HELLO = struct.Struct(">4sBBHQ")  # magic "FSHI" | version u8 | 0 u8 | 0 u16 | rank u64
HELLO_MAGIC = b"FSHI"
HELLO_VERSION = 1
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # EPIPE, not SIGPIPE, on a closed peer


class RelayError(FedsimError, RuntimeError):
    """A frame could not be exchanged; the message names the peer and the reason."""


class LinkClosed(RelayError):
    """The peer is gone (socket closed), sent a malformed frame, or said goodbye."""


class RelayTimeout(RelayError):
    """Nothing arrived from the peer before the deadline."""


class Evicted(RelayError):
    """The server dropped this client process for good (the message says why)."""


class RunFinished(RelayError):
    """The server ended the run while this process expected more (the message says why)."""


class _Stopped(RelayError):
    """This side closed the link while a thread was blocked on it."""


# -- limits -------------------------------------------------------------------------


class BodyLimits:
    """Largest frame body the server accepts from a client, by (kind, stage).

    A run-wide cap (:attr:`cap`), per-stage caps below it (:attr:`stages`: a REPLY at
    ShareKeys is far smaller than one at MaskedInputCollection, Bonawitz et al., CCS 2017,
    Fig. 4), and :data:`TERMINAL_MAX_BODY_BYTES` for BYE and FAIL. Callable as the
    :data:`~fedsim.transport.framing.BodyLimit` the links check each header against.
    """

    def __init__(self, cap: int) -> None:
        self.cap = _positive("max_body_bytes", cap)
        self.stages: dict[str, int] = {}

    def __call__(self, kind: Kind, stage: str) -> int:
        if kind in TERMINAL_KINDS:
            return min(self.cap, TERMINAL_MAX_BODY_BYTES)
        return min(self.cap, self.stages.get(stage, self.cap))

    def set_stages(self, limits: Mapping[str, int]) -> None:
        """Replace the per-stage caps (stage names of :data:`FRAME_STAGES`)."""
        checked = {}
        for stage, limit in limits.items():
            if stage not in FRAME_STAGES:
                raise ValueError(f"stage limit for stage={stage!r}: expected one of {FRAME_STAGES}")
            checked[stage] = _positive(f"stage limit for {stage or 'no stage'}", limit)
        self.stages = checked  # one assignment: the receiver threads see old or new, whole


def _positive(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} is invalid: expected an integer >= 1")
    return value


# -- one connection -----------------------------------------------------------------


@dataclass
class _Outgoing:
    frame: Frame | None  # None: raw bytes (send_raw)
    data: torch.Tensor
    linger_s: float  # for a terminal frame: how long to wait for the peer's own end

    def describe(self) -> str:
        return self.frame.describe() if self.frame is not None else f"{self.data.numel()} raw bytes"

    @property
    def terminal(self) -> bool:
        return self.frame is not None and self.frame.kind in TERMINAL_KINDS


class PeerLink:
    """Frames to and from one peer over one TCP connection.

    :meth:`send` never blocks: it encodes the frame and queues it for the sender thread.
    A receiver thread reads each frame (header checked against ``limit`` before the body
    is allocated) and keeps it for :meth:`receive`, which waits at most its timeout.
    Frames arrive in order. After a terminal frame (FINISH, EVICT, BYE, FAIL) in either
    direction that direction stops; the connection closes when both have, or after the
    terminal frame's linger.
    """

    def __init__(self, peer: int, sock: socket.socket, limit: BodyLimit | int, max_inbox: int | None = None) -> None:
        self.peer = peer
        self.limit = limit
        self._sock = sock
        _configure(sock)
        self._max_inbox = max_inbox
        self._frames: deque[Frame] = deque()
        self._closed: str | None = None  # why receive() fails once the frames are read
        self._inbox = threading.Condition()
        self._outbox: queue.Queue[_Outgoing | None] = queue.Queue()
        self._spare: torch.Tensor | None = None  # the largest body buffer whose send completed
        self._spare_lock = threading.Lock()
        self._dead = threading.Event()  # the socket is closed: both threads stop
        self._peer_done = threading.Event()  # the peer sent its terminal frame, or its end
        self._written = threading.Event()  # our last frame is written (or the link is dead)
        self._ending = False  # a terminal frame or the end sentinel is queued
        self._progress: tuple[str, int, int] | None = None  # frame being read: what, bytes so far, of
        self._running = 2  # link threads not yet ended
        self._sender = threading.Thread(target=self._send_loop, name=f"relay-send-{peer}", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name=f"relay-recv-{peer}", daemon=True)
        self._sender.start()
        self._receiver.start()

    # -- caller side ----------------------------------------------------------------

    def send(self, frame: Frame, linger_s: float = DROP_LINGER_S) -> None:
        """Queue ``frame`` for the peer (dropped silently once the link is broken or ended).

        After a terminal frame the connection closes once the peer has ended its side
        too, or ``linger_s`` after the frame went out.
        """
        if self._dead.is_set() or self._ending:
            return
        if self._outbox.qsize() >= MAX_QUEUED_FRAMES:
            self._fail(f"rank {self.peer} does not read: {MAX_QUEUED_FRAMES} frames wait for it")
            return
        with self._spare_lock:
            buffer, self._spare = self._spare, None
        try:
            data = encode_frame(frame, buffer)
        except FrameError as exc:
            self._fail(f"send of {frame.describe()} failed: {exc}")
            return
        if buffer is not None and data.data_ptr() != buffer.data_ptr():
            self._recycle(buffer)
        self._ending = frame.kind in TERMINAL_KINDS
        self._outbox.put(_Outgoing(frame, data, linger_s))

    def send_raw(self, data: bytes) -> None:
        """Queue ``data`` exactly as given, unframed, in order with the frames.

        What a modified peer could put on the wire: for attack scenarios and tests of the
        receiving side, never for the protocol.
        """
        if not (self._dead.is_set() or self._ending):
            self._outbox.put(_Outgoing(None, torch.frombuffer(bytearray(data), dtype=torch.uint8), 0.0))

    def receive(self, timeout_s: float) -> Frame:
        """The next frame from the peer; :class:`RelayTimeout` or :class:`LinkClosed` otherwise."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._inbox:
            while not self._frames and self._closed is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RelayTimeout(f"rank {self.peer}: nothing within {timeout_s:.3g} s")
                self._inbox.wait(left)
            if self._frames:
                frame = self._frames.popleft()
                self._inbox.notify_all()  # the receiver may be waiting for room
                return frame
            raise LinkClosed(self._closed)

    def pending(self) -> str | None:
        """What the receiver is in the middle of reading, if anything (for a timeout's reason)."""
        progress = self._progress
        if progress is None:
            return None
        what, done, total = progress
        return f"{what}: {done} of {total} bytes arrived"

    def flush(self, timeout_s: float, wait_for_peer: bool = True) -> bool:
        """Let the queued frames go out, then close the connection; True if it ended in time.

        Waits (at most ``timeout_s``) for the sender to write what is queued and, with
        ``wait_for_peer``, for the peer to end its side; then the socket is closed either way.
        """
        deadline = time.monotonic() + max(timeout_s, 0.0)
        if not self._ending:
            self._ending = True
            self._outbox.put(None)
        if wait_for_peer:
            self._sender.join(max(0.0, deadline - time.monotonic()))
            ended = not self._sender.is_alive()
        else:
            ended = self._written.wait(max(0.0, deadline - time.monotonic()))
        self.kill("the link was closed by this side")
        return ended

    def kill(self, reason: str) -> None:
        """Close the connection now; pending and later receives fail with ``reason``."""
        self._close_inbox(reason)
        if self._dead.is_set():
            return
        self._dead.set()
        self._peer_done.set()  # a lingering sender has nothing more to wait for
        self._written.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes both threads; the last one closes it
        except OSError:
            pass
        with self._spare_lock:
            idle = self._running == 0
        if idle:
            self._sock.close()

    def _thread_done(self) -> None:
        """A link thread ends; the last one closes the socket once the link is dead.

        The socket is never closed under a thread still in a call on it (its descriptor
        could be reused by another socket in between).
        """
        with self._spare_lock:
            self._running -= 1
            last = self._running == 0
        if last and self._dead.is_set():
            self._sock.close()

    # -- sender thread --------------------------------------------------------------

    def _send_loop(self) -> None:
        try:
            self._send_frames()
        except Exception as exc:  # never a silent dead link: the next receive says why
            logger.exception("rank %d: the relay's sender failed", self.peer)
            self.kill(f"the relay's sender for rank {self.peer} failed: {type(exc).__name__}: {_os_reason(exc)}")
        finally:
            self._thread_done()

    def _send_frames(self) -> None:
        while not self._dead.is_set():
            try:
                item = self._outbox.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is None:
                self._end_write(0.0)
                return
            try:
                self._send_all(item.data)
            except _Stopped:
                return
            except RelayError as exc:  # the peer does not read
                self._fail(f"send of {item.describe()} to rank {self.peer} failed: {_os_reason(exc)}")
                return
            except OSError as exc:  # the peer is gone: what it sent before still gets read
                self._ending = True
                self._written.set()
                logger.debug("rank %d: send of %s failed: %s", self.peer, item.describe(), _os_reason(exc))
                return
            if item.frame is None:
                continue
            self._recycle(item.data)
            if item.terminal:
                self._end_write(item.linger_s)
                return

    def _send_all(self, data: torch.Tensor) -> None:
        view = memoryview(data.numpy()).cast("B")
        sent, last = 0, time.monotonic()
        while sent < len(view):
            if self._dead.is_set():
                raise _Stopped
            try:
                sent += self._sock.send(view[sent:], _SEND_FLAGS)
                last = time.monotonic()
            except TimeoutError:
                if time.monotonic() - last > SEND_STALL_S:
                    raise RelayError(f"the peer read nothing for {SEND_STALL_S:g} s ({sent} of {len(view)} bytes sent)") from None

    def _end_write(self, linger_s: float) -> None:
        """After our last frame: FIN to the peer, wait (bounded) for its end, close.

        The peer's end is its terminal frame or its closing; a peer whose bad frame stopped
        our reading gets the whole linger to read ours (closing with its bytes unread
        resets the connection, which may discard our last frame before it reads it).
        """
        self._written.set()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._peer_done.wait(linger_s)
        self.kill("the link was closed by this side")

    def _recycle(self, data: torch.Tensor) -> None:
        with self._spare_lock:
            if self._spare is None or self._spare.numel() < data.numel():
                self._spare = data

    # -- receiver thread ------------------------------------------------------------

    def _receive_loop(self) -> None:
        try:
            self._receive_frames()
        except Exception as exc:  # e.g. no memory for a body within the limit
            logger.exception("rank %d: the relay's receiver failed", self.peer)
            self._close_inbox(f"the relay's receiver for rank {self.peer} failed: {type(exc).__name__}: {_os_reason(exc)}")
        finally:
            self._thread_done()

    def _receive_frames(self) -> None:
        header_bytes = bytearray(HEADER_BYTES)
        while True:
            try:
                if not self._read_exactly(memoryview(header_bytes), "a frame header", at_boundary=True):
                    self._peer_gone(f"connection lost: rank {self.peer} closed the connection")
                    return
                header = decode_header(bytes(header_bytes), self.limit)
                body = torch.empty(header.body_bytes, dtype=torch.uint8)
                what = f"{Frame(header.kind, header.round, header.stage).describe()} body"
                self._read_exactly(memoryview(body.numpy()), what)
                frame = decode_body(header, body)
            except FrameTooLarge as exc:  # reading stops; the connection stays for the EVICT
                self._close_inbox(f"oversized frame: {exc}")
                return
            except FrameError as exc:
                self._close_inbox(f"malformed frame: {exc}")
                return
            except _Stopped:
                return
            except OSError as exc:
                self._peer_gone(f"connection lost: {_os_reason(exc)}")
                return
            finally:
                self._progress = None
            if not self._deliver(frame):
                return
            if frame.kind in TERMINAL_KINDS:
                self._close_inbox(f"rank {self.peer} ended the link ({frame.kind.name})")
                self._peer_done.set()
                return

    def _peer_gone(self, reason: str) -> None:
        """The connection ended under us: nothing more to read, nothing can be sent."""
        self._peer_done.set()
        self.kill(reason)

    def _read_exactly(self, view: memoryview, what: str, at_boundary: bool = False) -> bool:
        """Fill ``view`` from the socket; False on a clean end before the first byte.

        Bounded reads: each waits at most :data:`POLL_S`, then looks whether this side
        closed the link. No deadline of its own: the caller's receive has it.
        """
        got = 0
        while got < len(view):
            if self._dead.is_set():
                raise _Stopped
            try:
                count = self._sock.recv_into(view[got:])
            except TimeoutError:
                continue
            if count == 0:
                if got == 0 and at_boundary:
                    return False
                raise ConnectionError(f"rank {self.peer} closed the connection after {got} of {len(view)} bytes of {what}")
            got += count
            self._progress = (what, got, len(view))
        return True

    def _deliver(self, frame: Frame) -> bool:
        """Keep ``frame`` for :meth:`receive`, waiting for room if the inbox is bounded."""
        with self._inbox:
            while self._max_inbox is not None and len(self._frames) >= self._max_inbox:
                if self._dead.is_set():
                    return False
                self._inbox.wait(POLL_S)
            self._frames.append(frame)
            self._inbox.notify_all()
        return True

    def _close_inbox(self, reason: str) -> None:
        with self._inbox:
            if self._closed is None:
                self._closed = reason
            self._inbox.notify_all()

    def _fail(self, reason: str) -> None:
        logger.debug("rank %d: %s", self.peer, reason)
        self.kill(reason)


def _configure(sock: socket.socket) -> None:
    """Bounded blocking reads and writes, and no Nagle delay on small frames."""
    sock.settimeout(POLL_S)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _os_reason(exc: BaseException) -> str:
    """``exc`` in one short line, e.g. "[Errno 104] Connection reset by peer"."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def failure_text(frame: Frame) -> str:
    """The reason carried by an EVICT, FINISH or FAIL frame."""
    return bytes(frame.entries.get(0, b"")).decode("utf-8", "replace")


def _reason_frame(kind: Kind, reason: str) -> Frame:
    return Frame(kind, entries={0: reason.encode("utf-8")[:4096]})


# -- addresses ----------------------------------------------------------------------


def _is_local(host: str) -> bool:
    """Whether ``host`` names an address of this machine (one it can bind to)."""
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, address in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((address[0], 0))
        except OSError:
            continue
        return True
    return False


def _loopback_literal(host: str) -> bool:
    """``localhost`` or a loopback IP literal: reachable from this machine only, on any machine.

    (A host *name* that resolves to 127.0.1.1 here, as Debian's /etc/hosts does, may be
    another node's way to reach this one: it does not count.)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _store_host(store: dist.Store) -> str | None:
    """The host of the TCPStore under ``store`` (prefix stores unwrapped), if any."""
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    return store.host if isinstance(store, dist.TCPStore) else None


def choose_relay_host(store: dist.Store | None) -> tuple[str | None, str]:
    """(address to bind, or None for all interfaces; host name or address to publish).

    Published: :envvar:`FEDSIM_RELAY_HOST` as is; else the store's host (MASTER_ADDR
    under torchrun, 127.0.0.1 for a local run) or MASTER_ADDR when it is an address of
    this machine; else this machine's fully qualified name. Bound: that address when it
    is a loopback one (a one-machine run stays off the network), else every interface.
    """
    override = os.environ.get(HOST_VARIABLE, "").strip()
    published = override or next(
        (host for host in (_store_host(store) if store is not None else None, os.environ.get("MASTER_ADDR")) if host and _is_local(host)),
        socket.getfqdn(),
    )
    return (published if _loopback_literal(published) and _is_local(published) else None), published


def _listen(bind: str | None, backlog: int) -> socket.socket:
    if bind is not None:
        family, _, _, _, address = socket.getaddrinfo(bind, 0, type=socket.SOCK_STREAM)[0]
        return socket.create_server((address[0], 0), family=family, backlog=backlog)
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", 0), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True)
    return socket.create_server(("", 0), family=socket.AF_INET, backlog=backlog)


def _parse_address(text: str) -> tuple[str, int]:
    """``host:port`` as published by the server; :class:`RelayError` naming what is wrong."""
    host, _, port = text.rpartition(":")
    if not host or len(host) > 255 or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise RelayError(f"store key {ADDRESS_KEY!r}={text[:300]!r} is not host:port with a port in [1, 65535]")
    return host, int(port)


def _store_timeout_s(store: dist.Store) -> float:
    return store.timeout.total_seconds()


# -- the server ---------------------------------------------------------------------


class ServerRelay:
    """The server's links to every client process, and which of them are still live.

    Listens, publishes its address in ``store`` and accepts one connection per rank of
    ``ranks`` within ``connect_timeout_s`` (default: the store's timeout, the world's
    start-up timeout); a rank that does not connect in time is dropped. A process is
    dropped when its socket closes, when it sends something malformed, oversized or
    unexpected, or when it misses a deadline; it is then sent EVICT and never waited on
    again for the rest of the run (:attr:`dropped` says why).
    """

    def __init__(
        self,
        store: dist.Store,
        ranks: Sequence[int],
        max_body_bytes: int,
        *,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.ranks = tuple(sorted(set(ranks)))
        if any(rank < 1 for rank in self.ranks) or len(self.ranks) != len(ranks):
            raise ValueError(f"ranks={list(ranks)!r} is invalid: expected distinct client ranks >= 1")
        self.links: dict[int, PeerLink] = {}
        self.dropped: dict[int, str] = {}
        self.refused: list[str] = []
        self.limits = BodyLimits(max_body_bytes)
        timeout_s = _store_timeout_s(store) if connect_timeout_s is None else connect_timeout_s
        bind, host = choose_relay_host(store)
        self._listener = _listen(bind, backlog=len(self.ranks) + 16)
        self.address = f"{host}:{self._listener.getsockname()[1]}"
        self._lock = threading.Condition()
        self._starting = True
        self._stop = threading.Event()
        self._wake, self._waker = socket.socketpair()  # a byte on it ends the acceptor's wait at once
        self._acceptor = threading.Thread(target=self._accept_loop, name="relay-accept", daemon=True)
        self._acceptor.start()
        self._publish(store)
        self._await_clients(timeout_s)

    # -- start-up -------------------------------------------------------------------

    def _publish(self, store: dist.Store) -> None:
        current = store.compare_set(ADDRESS_KEY, "", self.address).decode("utf-8", "replace")
        if current != self.address:
            logger.error("store key %r already held %r: overwritten with the server's %r", ADDRESS_KEY, current, self.address)
            store.set(ADDRESS_KEY, self.address)
        logger.debug("relay listening at %s for ranks %s", self.address, list(self.ranks))

    def _await_clients(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self.links) < len(self.ranks) and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            self._starting = False
            missing = [rank for rank in self.ranks if rank not in self.links]
        for rank in missing:
            self.drop(rank, f"did not connect to the relay at {self.address} within {timeout_s:g} s")

    def _accept_loop(self) -> None:
        """Accept connections and read their hellos, all at once (one slow one blocks none)."""
        selector = selectors.DefaultSelector()
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake, selectors.EVENT_READ)
        pending: dict[socket.socket, tuple[float, bytearray, str]] = {}
        try:
            self._accept_until_stopped(selector, pending)
        except (OSError, ValueError) as exc:  # the listener closed under us
            if not self._stop.is_set():
                logger.error("the relay stopped accepting connections: %s", _os_reason(exc))
        finally:
            for conn in pending:
                conn.close()
            selector.close()

    def _accept_until_stopped(self, selector: selectors.BaseSelector, pending: dict) -> None:
        while not self._stop.is_set():
            for key, _ in selector.select(POLL_S):
                if key.fileobj is self._listener:
                    self._accept_new(selector, pending)
                elif key.fileobj is self._wake:
                    return
                else:
                    self._read_hello(key.fileobj, selector, pending)
            now = time.monotonic()
            for conn, (deadline, _, peer) in list(pending.items()):
                if now > deadline:
                    selector.unregister(conn)
                    del pending[conn]
                    self._refuse(conn, f"connection from {peer}: no hello within {HELLO_TIMEOUT_S:g} s")

    def _accept_new(self, selector: selectors.BaseSelector, pending: dict) -> None:
        try:
            conn, address = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.warning("relay accept failed: %s", _os_reason(exc))
            return
        peer = _peer_name(address)
        if len(pending) >= MAX_PENDING_HELLOS:
            self._refuse(conn, f"connection from {peer}: {MAX_PENDING_HELLOS} connections already await their hello")
            return
        conn.setblocking(False)
        pending[conn] = (time.monotonic() + HELLO_TIMEOUT_S, bytearray(), peer)
        selector.register(conn, selectors.EVENT_READ)

    def _read_hello(self, conn: socket.socket, selector: selectors.BaseSelector, pending: dict) -> None:
        _, data, peer = pending[conn]
        try:
            chunk = conn.recv(_HELLO.size - len(data))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            chunk, problem = b"", _os_reason(exc)
        else:
            problem = "closed"
        data += chunk
        if chunk and len(data) < _HELLO.size:
            return
        selector.unregister(conn)
        del pending[conn]
        if len(data) < _HELLO.size:
            self._refuse(conn, f"connection from {peer}: {problem} after {len(data)} of {_HELLO.size} hello bytes")
            return
        self._admit(conn, bytes(data), peer)

    def _admit(self, conn: socket.socket, hello: bytes, peer: str) -> None:
        magic, version, reserved_8, reserved_16, rank = _HELLO.unpack(hello)
        if magic != HELLO_MAGIC or version != HELLO_VERSION or reserved_8 or reserved_16:
            self._refuse(conn, f"connection from {peer}: not a relay hello (magic {magic!r}, version {version})")
            return
        with self._lock:
            if rank not in self.ranks:
                why = f"claims rank {rank}, not a client rank of this run ({self.ranks[0]}..{self.ranks[-1]})" if self.ranks else f"claims rank {rank}; no client ranks expected"
            elif rank in self.links:
                why = f"claims rank {rank}, which is already connected"
            elif not self._starting:
                why = f"claims rank {rank} after the start-up ({self.dropped.get(rank, 'dropped')})"
            else:
                conn.setblocking(True)
                self.links[rank] = PeerLink(rank, conn, self.limits, max_inbox=SERVER_INBOX_FRAMES)
                self._lock.notify_all()
                logger.debug("rank %d connected from %s", rank, peer)
                return
        self._refuse(conn, f"connection from {peer} {why}")

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        """Tell the connection why (EVICT, best effort, never blocking) and close it."""
        logger.warning("relay refused a connection: %s", reason)
        if len(self.refused) < MAX_REFUSED_RECORDS:
            self.refused.append(reason)
        try:
            conn.setblocking(False)
            conn.send(encode_frame(_reason_frame(Kind.EVICT, f"the relay refused this connection: {reason}")).numpy().tobytes(), _SEND_FLAGS)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        conn.close()

    # -- the run --------------------------------------------------------------------

    @property
    def live(self) -> tuple[int, ...]:
        """Ranks not dropped, sorted."""
        return tuple(rank for rank in self.ranks if rank not in self.dropped)

    def set_max_body_bytes(self, max_body_bytes: int) -> None:
        """Largest frame body accepted from a client from now on (the run-wide cap)."""
        self.limits.cap = _positive("max_body_bytes", max_body_bytes)

    def set_stage_limits(self, limits: Mapping[str, int]) -> None:
        """Largest frame body accepted from a client at each stage named (REPLY frames;
        ``""``, the no-stage, caps REPORT), below the run-wide cap; replaces earlier ones.

        A header announcing more is refused before its body is read: the sender is
        dropped, named with the limit.
        """
        self.limits.set_stages(limits)

    def body_limit(self, kind: Kind, stage: str) -> int:
        """Largest body accepted now from a client for a ``kind`` frame at ``stage``."""
        return self.limits(kind, stage)

    def send(self, rank: int, frame: Frame) -> None:
        """Queue ``frame`` for ``rank`` if it is live."""
        if rank not in self.dropped:
            self.links[rank].send(frame)

    def drop(self, rank: int, reason: str) -> None:
        """Drop ``rank`` for the rest of the run and tell it why (if it still listens)."""
        if rank in self.dropped:
            return
        self.dropped[rank] = reason
        logger.warning("client process rank %d dropped: %s", rank, reason)
        if rank in self.links:
            self.links[rank].send(_reason_frame(Kind.EVICT, reason), linger_s=DROP_LINGER_S)

    def gather(self, ranks: Sequence[int], kind: Kind, round_idx: int, stage: str, timeout_s: float) -> dict[int, Frame]:
        """Each live rank's next frame, which must be ``kind`` for this round and stage.

        One deadline for all: the frames arrive in parallel (one thread per link), so the
        wait is the slowest peer's, at most ``timeout_s``. A rank that misses it (also one
        stalled mid-frame), closed its socket, sent an oversized or malformed frame,
        failed, or sent anything else is dropped.
        """
        deadline = time.monotonic() + timeout_s
        wanted = Frame(kind, round_idx, stage).describe()
        frames: dict[int, Frame] = {}
        for rank in ranks:
            if rank in self.dropped:
                continue
            link = self.links[rank]
            try:
                frame = link.receive(deadline - time.monotonic())
            except RelayTimeout:
                stalled = link.pending()
                self.drop(rank, f"no {wanted} within {timeout_s:g} s" + (f" (stalled: {stalled})" if stalled else ""))
                continue
            except LinkClosed as exc:
                self.drop(rank, f"{exc} (waiting for {wanted})")
                continue
            if frame.kind == Kind.FAIL:
                self.drop(rank, f"the process failed: {failure_text(frame)}")
            elif (frame.kind, frame.round, frame.stage) != (kind, round_idx, stage):
                self.drop(rank, f"sent {frame.describe()} while the server expected {wanted}")
            else:
                frames[rank] = frame
        return frames

    def close(self, reason: str, timeout_s: float) -> None:
        """End the run: FINISH to every live process, wait (bounded) for their BYE, close.

        Nothing here waits on a dropped process, and every wait has ``timeout_s``. A
        second call does nothing.
        """
        if self._stop.is_set():
            return
        live = self.live
        for rank in live:
            self.links[rank].send(_reason_frame(Kind.FINISH, reason), linger_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        for rank in live:
            link = self.links[rank]
            try:
                while link.receive(deadline - time.monotonic()).kind not in (Kind.BYE, Kind.FAIL):
                    pass
            except RelayError as exc:
                logger.debug("no goodbye from rank %d: %s", rank, exc)
        for rank in live:
            self.links[rank].flush(max(0.0, deadline - time.monotonic()))
        written_by = time.monotonic() + min(DROPPED_FLUSH_S, timeout_s)  # their EVICT, if still queued
        for rank, link in self.links.items():
            if rank not in live:
                link.flush(max(0.0, written_by - time.monotonic()), wait_for_peer=False)
        self._stop.set()
        self._waker.send(b"x")  # the acceptor wakes and returns
        self._acceptor.join(2 * POLL_S)
        for sock in (self._listener, self._wake, self._waker):
            sock.close()


def _peer_name(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


# -- a client process ---------------------------------------------------------------


def connect_to_server(store: dist.Store, rank: int, timeout_s: float) -> socket.socket:
    """Read the server's address from ``store``, connect, say hello as ``rank``.

    Retries a refused connection until ``timeout_s``; :class:`RelayError` naming the
    address and the reason otherwise.
    """
    deadline = time.monotonic() + timeout_s
    try:
        store.wait([ADDRESS_KEY], datetime.timedelta(seconds=max(timeout_s, 0.001)))
        text = store.get(ADDRESS_KEY).decode("utf-8", "replace")
    except (RuntimeError, ValueError) as exc:  # DistStoreError is a RuntimeError
        raise RelayError(f"rank {rank}: no relay address in the store within {timeout_s:g} s ({_os_reason(exc)})") from None
    host, port = _parse_address(text)
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.001, min(deadline - time.monotonic(), 30.0)))
            sock.sendall(_HELLO.pack(HELLO_MAGIC, HELLO_VERSION, 0, 0, rank))
            return sock
        except OSError as exc:
            if time.monotonic() >= deadline or not isinstance(exc, (ConnectionRefusedError, TimeoutError)):
                raise RelayError(f"rank {rank}: cannot reach the relay at {host}:{port}: {_os_reason(exc)}") from None
            time.sleep(0.05)


class ClientRelay:
    """A client process's link to the server.

    ``rank``: this process's rank (it names itself in the hello); ``connect_timeout_s``
    (for the server's address to appear and the connection) defaults to the store's timeout.
    """

    def __init__(
        self,
        store: dist.Store,
        server_rank: int,
        timeout_s: float,
        *,
        rank: int,
        connect_timeout_s: float | None = None,
    ) -> None:
        wait_s = _store_timeout_s(store) if connect_timeout_s is None else connect_timeout_s
        self.rank = rank
        self.link = PeerLink(server_rank, connect_to_server(store, rank, wait_s), CLIENT_MAX_BODY_BYTES)
        self.timeout_s = timeout_s

    def send(self, frame: Frame) -> None:
        """Queue ``frame`` for the server."""
        self.link.send(frame)

    def receive(self, *kinds: Kind) -> Frame:
        """The server's next frame, which must be one of ``kinds``.

        Raises :class:`Evicted` when the server dropped this process, :class:`RunFinished`
        when it ended the run early, :class:`RelayError` when the server is gone, silent
        for ``timeout_s`` or sends something else.
        """
        frame = self.link.receive(self.timeout_s)
        if frame.kind == Kind.EVICT:
            raise Evicted(f"the server dropped this process: {failure_text(frame)}")
        if frame.kind == Kind.FINISH and Kind.FINISH not in kinds:
            raise RunFinished(f"the server ended the run: {failure_text(frame)}")
        if frame.kind not in kinds:
            raise RelayError(f"the server sent {frame.describe()}, expected one of {[k.name for k in kinds]}")
        return frame

    def close(self, failure: str | None = None, timeout_s: float = 10.0) -> None:
        """Say goodbye (BYE, or FAIL with the error), wait (bounded) for the server's end, close."""
        self.link.send(Frame(Kind.BYE) if failure is None else _reason_frame(Kind.FAIL, failure), linger_s=timeout_s)
        self.link.flush(timeout_s)
