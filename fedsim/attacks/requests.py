"""Forged and replayed messages: ``both-shares`` and ``replay``.

``both-shares`` (Bonawitz et al., CCS 2017, Fig. 4, Round 4): a client must never reveal
both the share of a peer's self-mask seed b_v and the share of its mask key s_v^SK, nor
its own s^SK-share (b and s^SK together remove every mask of v's input). The server tries
six ways, each in a fresh round of the real protocol, against client 1 (the holder) and
client 2 (the peer); the attacker wins a way when one holder's replies, taken together,
reveal both kinds of share of one peer, or the peer's own s^SK-share.

``replay`` (the header of every message binds session, round, stage, direction, sender
and receiver; share ciphertexts and signatures bind session and round): messages taken
from another round of the same session, from another session, from an earlier stage of
the same round, or addressed to another client, replayed to clients and to the server;
share ciphertexts and (active) ConsistencyCheck signatures of an earlier round replayed
inside fresh messages. The attacker wins if any replay is accepted, or a round that
completes releases a sum other than its survivors' exact sum.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from fedsim.attacks.registry import BROKEN, HOLDS, AttackResult
from fedsim.attacks.rounds import (
    MemoryRound,
    body_of,
    honest_threshold,
    protocol_params,
    reason_of,
    rebody,
    rejections,
    request,
    revealed_shares,
    short,
    split_unmasking,
    unmasking_body,
)
from fedsim.secure_sum.identity import ClientPKI, local_pki
from secagg import messages as wire
from secagg import stages
from secagg.params import ProtocolParams
from secagg.threat_models import ACTIVE

__all__ = ["both_shares", "replay"]

logger = logging.getLogger(__name__)

HOLDER, PEER = 1, 2


# --- both-shares ----------------------------------------------------------------------------------


def _within_count(b_ids):
    """The survivors less one that is neither holder nor peer, so that adding the peer to
    the dropped list keeps the request within the shares the holder has."""
    spare = max(v for v in b_ids if v not in (HOLDER, PEER))
    return tuple(v for v in b_ids if v != spare)


def _way_both_lists(b_ids, sk_ids, rest):
    """One request naming the peer among the survivors and among the dropped."""
    return HOLDER, [unmasking_body(_within_count(b_ids), tuple(sorted({*sk_ids, PEER})), rest)]


def _way_own_key(b_ids, sk_ids, rest):
    """Ask the peer itself for its own s^SK-share (the others give its b-share)."""
    others = tuple(v for v in b_ids if v != PEER)
    return PEER, [unmasking_body(others, tuple(sorted({*sk_ids, PEER})), rest)]


def _way_b_then_sk(b_ids, sk_ids, rest):
    """The honest request, answered; then a second asking the peer's s^SK-share."""
    others = tuple(v for v in b_ids if v != PEER)
    return HOLDER, [unmasking_body(b_ids, sk_ids, rest), unmasking_body(others, tuple(sorted({*sk_ids, PEER})), rest)]


def _way_sk_then_b(b_ids, sk_ids, rest):
    """First the peer's s^SK-share (as if it had dropped), then its b-share."""
    others = tuple(v for v in b_ids if v != PEER)
    return HOLDER, [unmasking_body(others, tuple(sorted({*sk_ids, PEER})), rest), unmasking_body(b_ids, sk_ids, rest)]


def _way_overstated(b_ids, sk_ids, rest):
    """Counts that add up to more shares than the holder has, the peer in both lists."""
    extra = tuple(sorted({*sk_ids, PEER}))
    return HOLDER, [unmasking_body(b_ids, extra, rest, counts=(len(b_ids), len(extra)))]


def _way_unsorted(b_ids, sk_ids, rest):
    """The peer in both lists, the survivor list reversed (a naive duplicate check misses it)."""
    return HOLDER, [unmasking_body(tuple(reversed(_within_count(b_ids))), tuple(sorted({*sk_ids, PEER})), rest)]


_WAYS: tuple[tuple[str, Callable], ...] = (
    ("peer in both lists", _way_both_lists),
    ("peer's own s^SK-share", _way_own_key),
    ("second request, b then s^SK", _way_b_then_sk),
    ("second request, s^SK then b", _way_sk_then_b),
    ("overstated counts", _way_overstated),
    ("unsorted lists", _way_unsorted),
)


def _try_way(params: ProtocolParams, way: Callable) -> tuple[bool, str]:
    """(whether the attacker got both shares of the peer, what the holder answered)."""
    rnd = MemoryRound(params)
    honest = rnd.run_to(stages.UNMASKING)
    b_ids, sk_ids, rest = split_unmasking(honest[HOLDER])
    holder, bodies = way(b_ids, sk_ids, rest)
    kinds: dict[int, set[int]] = {}
    answered = 0
    for body in bodies:
        reply = rnd.answer({holder: request(params, stages.UNMASKING, holder, body)}).get(holder)
        if reply is None:
            break
        answered += 1
        for peer, kind, _share in revealed_shares(reply):
            kinds.setdefault(peer, set()).add(kind)
    rnd.check_forgeries()
    both = any(len(k) == 2 for k in kinds.values()) or wire.KIND_SK in kinds.get(holder, set())
    refusal = rnd.refusals.get(holder)
    told = f"refused: {short(reason_of(refusal), 60)}" if refusal is not None else f"answered {answered}"
    return both, told


def both_shares(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """Six ways to get the b-share and the s^SK-share of one peer; BROKEN if any works."""
    t = honest_threshold(clients, threat_model)
    results = [(name, *_try_way(protocol_params(clients, t, threat_model), way)) for name, way in _WAYS]
    won = [name for name, both, _ in results if both]
    answers = "; ".join(f"{name}: {told}" for name, _, told in results)
    verdict = BROKEN if won else HOLDS
    figure = f"{len(won)} of {len(results)} ways got both shares of one peer" + (f" ({', '.join(won)})" if won else "")
    return AttackResult("both-shares", threat_model, verdict, figure, f"t={t} of n={clients}; {answers}")


# --- replay -------------------------------------------------------------------------------------


def _stage_list(params: ProtocolParams) -> list[str]:
    return [s for s in stages.STAGES if s != stages.CONSISTENCY_CHECK or params.consistency_check]


class _Tally:
    """Replays tried, those accepted, and completed rounds whose sum was wrong."""

    def __init__(self) -> None:
        self.tried = 0
        self.accepted: list[str] = []
        self.wrong_sums: list[str] = []
        self.completed = 0

    def attempt(self, what: str, refused: bool) -> None:
        self.tried += 1
        if not refused:
            self.accepted.append(what)

    def outcome(self, rnd: MemoryRound, what: str) -> None:
        server = rnd.finish()
        if not server.aborted:
            self.completed += 1
            if not rnd.exact():
                self.wrong_sums.append(what)


def _to_clients(
    tally: _Tally, stage: str, params: ProtocolParams, old: MemoryRound, other: MemoryRound, previous: str | None, pki: ClientPKI | None
) -> None:
    """Replays of server requests at ``stage``, each to a different client of one fresh round."""
    rnd = MemoryRound(params, pki=pki)
    current = rnd.run_to(stage)
    forged = {
        1: ("another round's", old.requests[stage][1]),
        2: ("another session's", other.requests[stage][2]),
        4: ("another client's", current[1]),
    }
    if previous is not None:
        forged[3] = ("an earlier stage's", rnd.requests[previous][3])
    for u, (what, message) in forged.items():
        replied = rnd.answer({u: message})
        tally.attempt(f"{what} {stage} request to client {u}", u not in replied)


def _to_server(
    tally: _Tally, stage: str, params: ProtocolParams, old: MemoryRound, other: MemoryRound, previous: str | None, pki: ClientPKI | None
) -> None:
    """Replays of client replies at ``stage`` handed to the server of one fresh round."""
    rnd = MemoryRound(params, pki=pki)
    rnd.run_to(stage)
    replies = rnd.answer(rnd.messages)
    forged = {1: ("another round's", old.replies[stage][1]), 2: ("another session's", other.replies[stage][2])}
    if previous is not None:
        forged[3] = ("an earlier stage's", rnd.replies[previous][3])
    for u, (_, message) in forged.items():
        replies[u] = message
    known = len(rejections(rnd.server))
    rnd.advance(replies=replies)
    named = {sender for sender, at, _, _ in rejections(rnd.server)[known:] if at == stage}
    for u, (what, _) in forged.items():
        tally.attempt(f"{what} {stage} reply from client {u}", u in named)
    tally.outcome(rnd, f"round with replayed {stage} replies")


def _ciphertext_replay(tally: _Tally, params: ProtocolParams, old: MemoryRound, pki: ClientPKI | None) -> None:
    """Round 1's share ciphertexts for client 1, relayed in a round-2 message."""
    rnd = MemoryRound(params, pki=pki)
    current = rnd.run_to(stages.MASKED_INPUT_COLLECTION)
    stale = rebody(current[1], body_of(old.requests[stages.MASKED_INPUT_COLLECTION][1]))
    messages = dict(current)
    messages[1] = stale
    replies = rnd.answer(messages)
    known = len(rejections(rnd.server))
    rnd.advance(replies=replies)
    accused = [r for r in rejections(rnd.server)[known:] if r[1] in (stages.SHARE_KEYS, stages.MASKED_INPUT_COLLECTION)]
    refused = 1 not in replies or bool(accused)
    tally.attempt("round 1's share ciphertexts inside a round-2 request", refused)
    tally.outcome(rnd, "round with replayed ciphertexts")


def _signature_replay(tally: _Tally, params: ProtocolParams, old: MemoryRound, pki: ClientPKI | None) -> None:
    """Round 1's ConsistencyCheck signatures in a round-2 Unmasking request (active)."""
    rnd = MemoryRound(params, pki=pki)
    current = rnd.run_to(stages.UNMASKING)
    b_ids, sk_ids, _ = split_unmasking(current[1])
    _, _, stale_signatures = split_unmasking(old.requests[stages.UNMASKING][1])
    forged = request(params, stages.UNMASKING, 1, unmasking_body(b_ids, sk_ids, stale_signatures))
    tally.attempt("round 1's survivor-set signatures in round 2", 1 not in rnd.answer({1: forged}))


def replay(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """Replays across rounds, sessions, stages and receivers; BROKEN if one is accepted or a sum is wrong."""
    n = clients
    t = honest_threshold(n, threat_model)
    session = os.urandom(16)

    def make(round_idx: int, s: bytes = session) -> ProtocolParams:
        return protocol_params(n, t, threat_model, session=s, round_idx=round_idx)

    pki = local_pki(range(1, n + 1)) if threat_model == ACTIVE else None  # one population, as in a run
    old = MemoryRound(make(1), pki=pki)
    old.finish()
    other = MemoryRound(make(2, os.urandom(16)), pki=pki)
    other.finish()
    tally = _Tally()
    listed = _stage_list(old.params)
    for i, stage in enumerate(listed):
        previous = listed[i - 1] if i else None
        _to_clients(tally, stage, make(2), old, other, previous, pki)
        _to_server(tally, stage, make(2), old, other, previous, pki)
    _ciphertext_replay(tally, make(2), old, pki)
    if old.params.consistency_check:
        _signature_replay(tally, make(2), old, pki)
    broken = tally.accepted or tally.wrong_sums
    figure = f"{len(tally.accepted)} of {tally.tried} replays accepted; {len(tally.wrong_sums)} wrong sums in {tally.completed} completed rounds"
    if broken:
        cause = "; ".join([*tally.accepted, *(f"wrong sum: {w}" for w in tally.wrong_sums)][:3])
        return AttackResult("replay", threat_model, BROKEN, figure, f"t={t} of n={n}; {short(cause, 200)}")
    return AttackResult(
        "replay", threat_model, HOLDS, figure,
        f"t={t} of n={n}; headers bind session, round, stage, sender and receiver; ciphertexts "
        "and signatures bind session and round: every replay was refused by the client or rejected by the server",
    )
