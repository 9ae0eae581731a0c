"""Running a stage-by-stage protocol over the relay, for every virtual client at once.

The protocol (:mod:`secagg.protocol`) is transport-agnostic: each stage is one round trip
"server message to each client, one reply back", all bytes. This module moves those bytes:

- the server sends START (the cohort) to every live process hosting cohort members, then
  per stage ONE frame per process batching the messages of all the clients it hosts, and
  gathers one REPLY frame per process under the stage deadline; a process that misses it
  or whose socket closed is dropped with all its clients; when the protocol is done it
  sends OUTCOME (completed or aborted, survivors);
- a client process answers each stage for each hosted client still in the round, lets a
  client go silent where the :class:`~fedsim.secure_sum.dropouts.DropoutPlan` says so, and treats a
  client whose protocol refuses (``ProtocolError``) as dropped for the rest of the round.

The stages before MaskedInputCollection need no input (key advertisement and Shamir
sharing: Bonawitz et al. 2017, Sec. 4, can run ahead of the data). So the input is asked
for only when MaskedInputCollection arrives: hooks let the caller produce it there (a
client process trains its clients then) and let the server wait for that work under its
own deadline before the stage's usual one starts.

The protocol objects are duck-typed (:class:`ServerStages`, :class:`ClientStages`): the
contract of ``secagg.protocol.ServerRound`` / ``ClientRound``. Messages reach them as
read-only memoryviews of the received frame (bytes-like, not copied; ``secagg`` parses
any bytes-like object).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fedsim.transport.framing import Frame, FrameError, pack_ids, unpack_ids
from fedsim.transport.relay import ClientRelay, ServerRelay
from fedsim.transport.vocabulary import INPUT_STAGE, Kind, OutcomeEntry, StartEntry

__all__ = [
    "ClientStages",
    "RoundOutcome",
    "ServerStages",
    "client_stages",
    "named_rejection",
    "server_stages",
]

logger = logging.getLogger(__name__)


class ServerStages(Protocol):
    """The server side of a stage-by-stage protocol (``secagg.protocol.ServerRound``)."""

    done: bool
    aborted: bool
    abort_reason: str | None
    survivors: tuple[int, ...]
    stage: str
    rejections: list  # (sender, stage, reason[, verdict]) of every reply the protocol rejected
    # optional: ``disputes``, (u, v, reason) of pairs the protocol could not adjudicate

    def start(self) -> dict[int, bytes]: ...

    def step(self, replies: Mapping[int, bytes]) -> dict[int, bytes]: ...


class ClientStages(Protocol):
    """One client's side (``secagg.protocol.ClientRound``)."""

    stage: str

    def handle(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class RoundOutcome:
    """How one secure sum ended, as the server saw it.

    ``dropped``: per stage, the clients asked at that stage whose answer did not count
    (silent, refused, rejected by the protocol, or their process gone). ``stage_seconds``: wall time of
    each stage at the server, relay included. ``rejections``: the protocol's named
    rejections, (client, stage, reason, verdict) with verdict ``rejected`` (the message
    was refused) or ``malicious`` (the server holds proof of misbehaviour).
    ``corrupted``: the sum completed but failed the decode-time range check, so it was
    not applied (``aborted`` is then True and ``survivors`` still names whose inputs it
    summed: the server saw that sum, and the accountant counts it). ``disputes``: (u, v,
    reason) of the pairs whose ShareKeys key checks disagreed (nothing was relayed
    between them; the server cannot tell which one lied, so neither is named).
    """

    cohort: tuple[int, ...]
    survivors: tuple[int, ...]
    aborted: bool
    abort_reason: str | None
    dropped: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    rejections: tuple[tuple[int, str, str, str], ...] = ()
    corrupted: bool = False
    disputes: tuple[tuple[int, int, str], ...] = ()


_COMPLETED = b"\x00"
_ABORTED = b"\x01"


def _outcome_frame(round_idx: int, outcome: RoundOutcome) -> Frame:
    status = _ABORTED + (outcome.abort_reason or "").encode("utf-8") if outcome.aborted else _COMPLETED
    return Frame(Kind.OUTCOME, round_idx, entries={OutcomeEntry.STATUS: status, OutcomeEntry.SURVIVORS: pack_ids(outcome.survivors)})


def _outcome_from_frame(frame: Frame, cohort: tuple[int, ...]) -> RoundOutcome:
    status = bytes(frame.entries.get(OutcomeEntry.STATUS, b""))
    if status[:1] not in (_COMPLETED, _ABORTED):
        raise FrameError("OUTCOME frame without a status")
    aborted = status[:1] == _ABORTED
    reason = status[1:].decode("utf-8", "replace") if aborted else None
    return RoundOutcome(cohort, unpack_ids(frame.entries.get(OutcomeEntry.SURVIVORS, b""), "survivors"), aborted, reason)


def named_rejection(rejection: tuple) -> tuple[int, str, str, str]:
    """(client, stage, reason, verdict) of one protocol rejection (verdict ``rejected`` unless named)."""
    sender, stage, reason = rejection[:3]
    verdict = rejection[3] if len(rejection) > 3 else "rejected"
    return int(sender) if isinstance(sender, int) else -1, str(stage), str(reason), str(verdict)


def server_stages(
    relay: ServerRelay,
    hosts: Mapping[int, Sequence[int]],
    protocol: ServerStages,
    *,
    round_idx: int,
    cohort: tuple[int, ...],
    timeout_s: float,
    before_input: Callable[[list[int]], None] | None = None,
) -> RoundOutcome:
    """Drive ``protocol`` to its end over the client processes ``hosts`` ({rank: client ids}).

    Every live process in ``hosts`` takes part (one with no cohort member answers empty).

    ``timeout_s``: the deadline of each stage's replies. ``before_input(ranks)``: called
    once the MaskedInputCollection requests are sent to the live ``ranks``, before their
    replies are awaited (the caller waits there, under its own deadline, for the work
    that produces the inputs).

    Never raises on client input: malformed frames, foreign client ids, silence and dead
    sockets all end as dropped clients. An exception from ``protocol`` itself (a bug)
    aborts the round with its message, logged with the traceback.
    """
    ranks = [rank for rank in relay.live if rank in hosts]
    for rank in ranks:
        relay.send(rank, Frame(Kind.START, round_idx, entries={StartEntry.COHORT: pack_ids(cohort)}))
    dropped: dict[str, tuple[int, ...]] = {}
    seconds: dict[str, float] = {}
    failure: str | None = None
    try:
        messages = protocol.start()
        while not protocol.done:
            stage, started = protocol.stage, time.perf_counter()
            ranks = [rank for rank in ranks if rank in relay.live]
            for rank in ranks:
                batch = {cid: messages[cid] for cid in hosts[rank] if cid in messages}
                relay.send(rank, Frame(Kind.STAGE, round_idx, stage, batch))
            if stage == INPUT_STAGE and before_input is not None:
                before_input(ranks)
                ranks = [rank for rank in ranks if rank in relay.live]
            replies: dict[int, bytes] = {}
            for rank, frame in relay.gather(ranks, Kind.REPLY, round_idx, stage, timeout_s).items():
                foreign = sorted(set(frame.entries) - set(hosts[rank]))
                if foreign:
                    relay.drop(rank, f"replied at {stage} for clients {foreign} it does not host")
                else:
                    replies.update(frame.entries)
            known = len(protocol.rejections)
            next_messages = protocol.step(replies)
            rejected = {rejection[0] for rejection in protocol.rejections[known:]}
            lost = tuple(sorted((set(messages) - set(replies)) | (rejected & set(messages))))
            if lost:
                dropped[stage] = lost
            messages = next_messages
            seconds[stage] = time.perf_counter() - started
    except Exception as exc:  # a protocol bug must not take the server down
        logger.exception("round %d: the protocol failed at the server", round_idx)
        failure = f"protocol error at the server: {exc}"
    rejections = tuple(named_rejection(r) for r in protocol.rejections)
    disputes = tuple(tuple(d) for d in getattr(protocol, "disputes", ()))
    if failure is None and not protocol.aborted:
        outcome = RoundOutcome(cohort, tuple(protocol.survivors), False, None, dropped, seconds, rejections, False, disputes)
    else:
        reason = failure or protocol.abort_reason or "aborted"
        outcome = RoundOutcome(cohort, (), True, reason, dropped, seconds, rejections, False, disputes)
    for rank in ranks:  # those still live: relay.send skips the dropped
        relay.send(rank, _outcome_frame(round_idx, outcome))
    return outcome


def client_stages(
    relay: ClientRelay,
    make_rounds: Callable[[tuple[int, ...]], Mapping[int, ClientStages]],
    *,
    round_idx: int,
    drops: Callable[[str, int], bool],
    refusal: type[Exception],
    provide_input: Callable[[list[int]], None] | None = None,
) -> RoundOutcome:
    """Answer the server's stages (START, then STAGE frames) for every hosted client until OUTCOME.

    ``make_rounds(cohort)`` builds the protocol object of each hosted cohort member;
    ``drops(stage, client_id)`` says whether a client goes silent there;
    ``refusal`` is the protocol's refusal exception (the client leaves the round).
    ``provide_input(client_ids)``: called when MaskedInputCollection arrives, with the
    clients still in the round that it asks, to give them their inputs (the caller may
    train them there); a client not asked needs none.
    """
    start = relay.receive(Kind.START)
    if start.round != round_idx:
        raise FrameError(f"expected START of round {round_idx}, got {start.describe()}")
    cohort = unpack_ids(start.entries.get(StartEntry.COHORT, b""), "cohort")
    rounds = make_rounds(cohort)
    active = set(rounds)
    while True:
        frame = relay.receive(Kind.STAGE, Kind.OUTCOME)
        if frame.round != round_idx:
            raise FrameError(f"expected a frame of round {round_idx}, got {frame.describe()}")
        if frame.kind == Kind.OUTCOME:
            return _outcome_from_frame(frame, cohort)
        if frame.stage == INPUT_STAGE and provide_input is not None:
            provide_input(sorted(c for c in frame.entries if c in active))
        replies: dict[int, bytes] = {}
        for client_id, message in frame.entries.items():
            if client_id not in active:
                continue
            if drops(frame.stage, client_id):
                logger.info("round %d: client %d drops out at %s (injected)", round_idx, client_id, frame.stage)
                active.discard(client_id)
                continue
            try:
                replies[client_id] = rounds[client_id].handle(message)
            except refusal as exc:
                logger.warning("round %d: client %d leaves the round at %s: %s", round_idx, client_id, frame.stage, exc)
                active.discard(client_id)
        relay.send(Frame(Kind.REPLY, round_idx, frame.stage, replies))
