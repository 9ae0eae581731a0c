"""The relay: framed point-to-point messages between the server and client processes.

Every message of a run goes between rank 0 (the server) and one client process, never
between two clients: the server relays what clients send one another (the encrypted
Shamir shares) inside its own frames. Each :class:`~fedsim.transport.framing.Frame` travels as two
gloo point-to-point sends on the relay group: the fixed-size header, then the body.

Deadlines are ours, not gloo's. Two facts about gloo (torch 2.x, TCP transport) shape
this module:

- a receive that times out inside gloo ("Timed out waiting ... for recv") closes *every*
  pair of the process group ("Application timeout caused pair closure"): one slow peer
  would take the whole run down. So no gloo wait here ever times out: the relay group is
  made with a timeout of a year (:data:`GLOO_NEVER`), and
- a gloo receive cannot be polled (``Work.is_completed`` stays false, ``get_future`` is
  not implemented) nor cancelled,

so each peer gets a :class:`PeerLink`: a sender thread and a receiver thread that block in
gloo, and queues the caller waits on with its own deadline. A peer that dies closes its
TCP socket: gloo fails that pair only, the link's threads stop at once and say why. A peer
that is alive but silent past a deadline is dropped and never waited on again; its
receiver thread stays blocked until the peer sends, leaves or the process ends.

A third fact: gloo *terminates the receiving process* (``gloo::EnforceNotMet``, not an
exception) when a peer sends more bytes than the posted receive. Headers have a fixed
size and bodies the announced length, so only a modified client can trigger it; that is
a limit of gloo as a transport against hostile peers (see the README's threat model).
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fedsim.errors import FedsimError
from fedsim.transport.framing import (
    HEADER_BYTES,
    Frame,
    FrameError,
    decode_body,
    decode_header,
    encode_frame,
)
from fedsim.transport.vocabulary import TERMINAL_KINDS, Kind

__all__ = [
    "CLIENT_MAX_BODY_BYTES",
    "GLOO_NEVER",
    "ClientRelay",
    "Evicted",
    "LinkClosed",
    "PeerLink",
    "RelayError",
    "RelayTimeout",
    "RunFinished",
    "ServerRelay",
    "relay_group",
]

logger = logging.getLogger(__name__)

GLOO_NEVER = datetime.timedelta(days=365)
"""Timeout of the relay group: gloo must never time out on its own (see the module doc)."""

FIRST_TAG = 0x7E1  # the first FIRST_BYTES of every frame (all of a small one)
REST_TAG = 0x7E2  # the rest of a frame longer than FIRST_BYTES
FIRST_BYTES = 64 * 1024
"""One gloo message carries a frame up to this size: the receiver always has a buffer this
large posted, so a small frame costs one message, not a header and then a body (gloo
waits for the receive to be posted before it moves data: a second message would cost a
second round trip). Longer frames send the rest in a second message of exact size."""

CLIENT_MAX_BODY_BYTES = 1 << 36
"""Largest frame body a client accepts from the server (the server is not the threat here)."""


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


@dataclass(frozen=True)
class _Closed:
    reason: str


class PeerLink:
    """Frames to and from one peer rank.

    :meth:`send` never blocks: it posts the gloo sends at once and a completion thread
    waits for them (keeping the buffers alive, then recycling them). A receiver thread
    posts the receives and queues each frame; :meth:`receive` waits for it at most its
    timeout. Frames arrive in order. After a terminal frame (FINISH, EVICT, BYE, FAIL)
    in either direction that direction stops.
    """

    def __init__(self, peer: int, group: dist.ProcessGroup | None, max_body_bytes: int) -> None:
        self.peer = peer
        self.group = group
        self.max_body_bytes = max_body_bytes
        self._posted: queue.Queue[tuple[Frame, list[dist.Work], torch.Tensor] | None] = queue.Queue()
        self._inbox: queue.Queue[Frame | _Closed] = queue.Queue()
        self._send_lock = threading.Lock()
        self._spare: list[torch.Tensor] = []  # body buffers whose sends completed
        self._send_error: str | None = None
        self._completer = threading.Thread(target=self._complete_loop, name=f"relay-send-{peer}", daemon=True)
        self._receiver = threading.Thread(target=self._receive_loop, name=f"relay-recv-{peer}", daemon=True)
        self._completer.start()
        self._receiver.start()

    # -- caller side ----------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Post ``frame`` to the peer (dropped silently once the link is broken)."""
        with self._send_lock:
            if self._send_error is not None:
                return
            try:
                buffer = self._spare.pop() if self._spare else None
                data = encode_frame(frame, buffer)
                works = [dist.isend(data[:FIRST_BYTES], dst=self.peer, group=self.group, tag=FIRST_TAG)]
                if data.numel() > FIRST_BYTES:
                    works.append(dist.isend(data[FIRST_BYTES:], dst=self.peer, group=self.group, tag=REST_TAG))
            except (RuntimeError, FrameError) as exc:  # gloo raises RuntimeError on a closed socket
                self._broken(frame, exc)
                return
            reused = buffer is not None and data.data_ptr() == buffer.data_ptr()
            self._posted.put((frame, works, buffer if reused else data))

    def receive(self, timeout_s: float) -> Frame:
        """The next frame from the peer; :class:`RelayTimeout` or :class:`LinkClosed` otherwise."""
        try:
            item = self._inbox.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            raise RelayTimeout(f"rank {self.peer}: nothing within {timeout_s:.3g} s") from None
        if isinstance(item, _Closed):
            self._inbox.put(item)  # every later receive sees it too
            raise LinkClosed(item.reason)
        return item

    def flush(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) for the posted sends to complete; True if they did."""
        self._posted.put(None)
        self._completer.join(timeout_s)
        return not self._completer.is_alive()

    # -- threads --------------------------------------------------------------------

    def _broken(self, frame: Frame, exc: BaseException) -> None:
        self._send_error = f"send of {frame.describe()} failed: {_first_line(exc)}"
        logger.debug("rank %d: %s", self.peer, self._send_error)

    def _complete_loop(self) -> None:
        while (posted := self._posted.get()) is not None:
            frame, works, body = posted
            try:
                for work in works:
                    work.wait()
            except RuntimeError as exc:
                self._broken(frame, exc)
                return
            with self._send_lock:  # recycle the body buffer; keep only the largest spare
                self._spare[:] = [max([*self._spare, body], key=lambda t: t.numel())]
            if frame.kind in TERMINAL_KINDS:
                return

    def _receive_loop(self) -> None:
        while True:
            try:
                data = torch.empty(FIRST_BYTES, dtype=torch.uint8)
                dist.irecv(data, src=self.peer, group=self.group, tag=FIRST_TAG).wait()
                header = decode_header(data[:HEADER_BYTES].numpy().tobytes(), self.max_body_bytes)
                total = HEADER_BYTES + header.body_bytes
                if total > FIRST_BYTES:
                    first, data = data, torch.empty(total, dtype=torch.uint8)
                    data[:FIRST_BYTES].copy_(first)
                    dist.irecv(data[FIRST_BYTES:], src=self.peer, group=self.group, tag=REST_TAG).wait()
                frame = decode_body(header, data[HEADER_BYTES:total])
            except FrameError as exc:
                self._inbox.put(_Closed(f"malformed frame: {exc}"))
                return
            except RuntimeError as exc:  # gloo: socket closed by the peer, or out of memory
                self._inbox.put(_Closed(f"connection lost: {_first_line(exc)}"))
                return
            self._inbox.put(frame)
            if frame.kind in TERMINAL_KINDS:
                return


def _first_line(exc: BaseException) -> str:
    """The gist of a gloo error: "Connection closed by peer [127.0.0.1]:5555", not the source path."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    if line.startswith("[") and "] " in line:  # "[/path/pair.cc:561] Connection closed by ..."
        line = line.split("] ", 1)[1]
    return line.split(". This is typically", 1)[0][:300]


def failure_text(frame: Frame) -> str:
    """The reason carried by an EVICT, FINISH or FAIL frame."""
    return bytes(frame.entries.get(0, b"")).decode("utf-8", "replace")


class ServerRelay:
    """The server's links to every client process, and which of them are still live.

    A process is dropped when its socket closes, when it sends something malformed or
    unexpected, or when it misses a deadline; it is then sent EVICT and never waited on
    again for the rest of the run (:attr:`dropped` says why).
    """

    def __init__(self, group: dist.ProcessGroup | None, ranks: Sequence[int], max_body_bytes: int) -> None:
        self.links = {rank: PeerLink(rank, group, max_body_bytes) for rank in ranks}
        self.dropped: dict[int, str] = {}

    @property
    def live(self) -> tuple[int, ...]:
        """Ranks not dropped, sorted."""
        return tuple(rank for rank in sorted(self.links) if rank not in self.dropped)

    def set_max_body_bytes(self, max_body_bytes: int) -> None:
        """Largest frame body accepted from a client from now on."""
        for link in self.links.values():
            link.max_body_bytes = max_body_bytes

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
        self.links[rank].send(Frame(Kind.EVICT, entries={0: reason.encode("utf-8")}))

    def gather(self, ranks: Sequence[int], kind: Kind, round_idx: int, stage: str, timeout_s: float) -> dict[int, Frame]:
        """Each live rank's next frame, which must be ``kind`` for this round and stage.

        One deadline for all: the frames arrive in parallel (one thread per link), so the
        wait is the slowest peer's, at most ``timeout_s``. A rank that misses it, closed
        its socket, failed, or sent anything else is dropped.
        """
        deadline = time.monotonic() + timeout_s
        wanted = Frame(kind, round_idx, stage).describe()
        frames: dict[int, Frame] = {}
        for rank in ranks:
            if rank in self.dropped:
                continue
            try:
                frame = self.links[rank].receive(deadline - time.monotonic())
            except RelayTimeout:
                self.drop(rank, f"no {wanted} within {timeout_s:g} s")
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
        """End the run: FINISH to every live process, wait (bounded) for their BYE.

        Nothing here waits on a dropped process, and every wait has ``timeout_s``.
        """
        live = self.live
        finish = Frame(Kind.FINISH, entries={0: reason.encode("utf-8")})
        for rank in live:
            self.links[rank].send(finish)
        deadline = time.monotonic() + timeout_s
        for rank in live:
            link = self.links[rank]
            try:
                while link.receive(deadline - time.monotonic()).kind not in (Kind.BYE, Kind.FAIL):
                    pass
            except RelayError as exc:
                logger.debug("no goodbye from rank %d: %s", rank, exc)
        for link in self.links.values():
            link.flush(max(0.0, deadline - time.monotonic()) if link.peer in live else 0.0)


class ClientRelay:
    """A client process's link to the server."""

    def __init__(self, group: dist.ProcessGroup | None, server_rank: int, timeout_s: float) -> None:
        self.link = PeerLink(server_rank, group, CLIENT_MAX_BODY_BYTES)
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
        """Say goodbye (BYE, or FAIL with the error) and wait, bounded, for it to leave."""
        if failure is None:
            self.link.send(Frame(Kind.BYE))
        else:
            self.link.send(Frame(Kind.FAIL, entries={0: failure.encode("utf-8")[:4096]}))
        self.link.flush(timeout_s)


def relay_group() -> dist.ProcessGroup:
    """A gloo group over the whole world whose own timeout never fires (:data:`GLOO_NEVER`).

    Collective to create: every rank calls it right after ``init_process_group``.
    """
    return dist.new_group(backend="gloo", timeout=GLOO_NEVER)
