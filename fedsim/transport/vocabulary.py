"""The words server and client processes share: frame kinds, protocol stages, entry keys.

One module, imported by both sides (as Flower's ``secure_aggregation`` keeps one constants
module for server and client), so a name cannot differ between the two:

- :class:`Kind`: what a frame is for;
- stage names: the secure-aggregation protocol's own (:mod:`secagg.stages`, Bonawitz et
  al., CCS 2017, Fig. 4), plus ``NO_STAGE`` for frames outside the protocol;
- entry keys: the fields of the job's own frames (SETUP, ROUND, START, OUTCOME), by name.
  Protocol frames (STAGE, REPLY, REPORT) key their entries by virtual client id instead.
"""

from __future__ import annotations

from enum import IntEnum

from secagg.stages import MASKED_INPUT_COLLECTION, STAGES

__all__ = [
    "DROPOUT_STAGES",
    "FRAME_STAGES",
    "INPUT_STAGE",
    "NO_STAGE",
    "TERMINAL_KINDS",
    "Kind",
    "OutcomeEntry",
    "RoundEntry",
    "SetupEntry",
    "StartEntry",
]


class Kind(IntEnum):
    """What a frame is for. Server to client first, then client to server."""

    SETUP = 1  # a method starts: session id and the initial global state
    ROUND = 2  # a round's phase starts: the global vector and who trains
    START = 3  # a secure sum starts: its cohort
    STAGE = 4  # one protocol stage: the server's message to each hosted client
    OUTCOME = 5  # the secure sum ended: completed or aborted, and the survivors
    DONE = 6  # the method ended
    FINISH = 7  # the run ended: the client process may leave
    EVICT = 8  # the server dropped this process for good (the reason is in the body)
    REPORT = 16  # what each hosted client ran in local training
    REPLY = 17  # one protocol stage: each hosted client's reply
    BYE = 18  # the client process leaves (answers FINISH or EVICT)
    FAIL = 19  # the client process failed (the error is in the body) and leaves


TERMINAL_KINDS = frozenset({Kind.FINISH, Kind.EVICT, Kind.BYE, Kind.FAIL})
"""After one of these, the sender sends nothing more on the link."""

NO_STAGE = ""
"""The stage of a frame outside the secure-aggregation protocol."""

FRAME_STAGES: tuple[str, ...] = (NO_STAGE, *STAGES)
"""Stage names a frame may carry; a frame header stores the index into this tuple."""

DROPOUT_STAGES: tuple[str, ...] = STAGES
"""Stages at which a client can be made to drop out: every protocol stage."""

INPUT_STAGE = MASKED_INPUT_COLLECTION
"""The first stage whose replies depend on the clients' inputs (they train then)."""

class SetupEntry(IntEnum):
    """Entries of a SETUP frame (a method starts)."""

    SESSION = 0  # the method's secure-aggregation session id
    INITIAL_STATE = 1  # every trainable parameter's initial value (float32 vector)


class RoundEntry(IntEnum):
    """Entries of a ROUND frame (one phase of a round starts)."""

    GLOBAL_STATE = 0  # every trainable parameter's global value (float32 vector)
    CLIENTS = 1  # the hosted clients that train in this phase (u64 ids)


class StartEntry(IntEnum):
    """Entries of a START frame (a secure sum starts)."""

    COHORT = 0  # the cohort of the secure sum (u64 ids)


class OutcomeEntry(IntEnum):
    """Entries of an OUTCOME frame (a secure sum ended)."""

    STATUS = 0  # COMPLETED, or ABORTED followed by the reason (UTF-8)
    SURVIVORS = 1  # the clients whose inputs are in the sum (u64 ids)
