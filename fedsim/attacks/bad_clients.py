"""Malicious clients: ``bad-ciphertext``, ``false-accusation``, ``bad-share``, ``out-of-range-input``.

Each attacker is a real :class:`secagg.client.ClientRound` whose replies are spoiled on
the way out (the honest clients and the server are the real classes, untouched):

- ``bad-ciphertext`` (Bonawitz et al., CCS 2017, Fig. 4, Round 1): the attacker's
  ShareKeys reply carries garbage ciphertexts for every peer, for one peer, valid
  ciphertexts swapped between two receivers, or garbage for just n - t peers (so only
  t - 1 honest clients can open its shares, and they masked with it), or honest
  ciphertexts with wrong channel-key checks for n - t + 1 peers (disputed pairs). The
  honest receivers cannot decrypt them.
  HOLDS when each round completes with the exact sum of its survivors, every honest
  client survives, the attacker is named in the server's rejections (except for
  disputes, which cannot say who deviated) and no honest client is.
- ``false-accusation``: the attacker reports shares it opened as unopenable, for one
  peer and for n - t peers (the accusation channel of the robust protocol turned
  against honest clients). Semi-honest mode reveals the channel key with each
  accusation, so the server can prove the lie; active mode cannot (a malicious server
  could forge ciphertexts to harvest keys), so the accused is excluded: BROKEN there by
  design (availability: an unverifiable accusation costs the accused its round).
- ``bad-share`` (Round 4): a holder reveals wrong shares in Unmasking: one b-share, every
  share, or the s^SK-share of a client that dropped. The holder is client 1, whose share
  is among the first t by holder id (a server reconstructing from the first t would use
  it), also in a round left with t + 1 survivors (exactly t good shares of each secret).
  HOLDS when every round completes with the exact sum (one bad share must not abort a
  round that has t good ones; the dropout variant is skipped when n - 2 < t, where no
  round can have t good shares).
- ``out-of-range-input``: the attacker skips the fixed-point codec and masks ring values
  no clipped input can encode: (n + 1) x clip on one coordinate, 2^(k-1) on another (it
  wraps the ring), in two rounds, beside an honest control round. The honest inputs are
  in [0, clip], so each poisoned sum is outside what s survivors can produce. HOLDS when
  the server's decode-time check (``fedsim.secure_sum.exchange.checked_sum``, as
  ``server_secure_sum`` calls it) flags both poisoned sums and does not apply them, and
  passes the control. An in-range poisoned input is out of scope (no input proofs).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from fedsim.attacks.registry import BROKEN, HOLDS, AttackResult
from fedsim.dp.randomness import secret_random
from fedsim.attacks.rounds import (
    MemoryRound,
    body_of,
    honest_threshold,
    protocol_params,
    rebody,
    rejections,
    secure_sum_config,
    short,
)
from secagg import messages as wire
from secagg import stages
from secagg.channel import CIPHERTEXT_BYTES
from secagg.client import ClientRound
from secagg.encoding import as_ring_array
from secagg.shamir import LIMBS, random_field_elements, share_to_bytes

__all__ = ["bad_ciphertext", "bad_share", "false_accusation", "out_of_range_input"]

logger = logging.getLogger(__name__)

ATTACKER = 2
"""The malicious client of ``bad-ciphertext`` (not the lowest id)."""
BAD_HOLDER = 1
"""The holder revealing wrong shares in ``bad-share`` (the lowest id: among the first t)."""
TIGHT = "every share wrong, t + 1 survivors"
"""The ``bad-share`` variant with exactly t good shares of every secret left (n - t - 1
clients drop before MaskedInputCollection): Berlekamp-Welch cannot correct one error
from t + 1 shares, so the server must find the good t another way."""
WORST_CASE = "garbage to n - t peers"
"""The ``bad-ciphertext`` variant that leaves exactly t - 1 honest clients holding valid
shares of the attacker: the peers that opened them masked with it, so once it is
excluded its pairwise masks must still leave the sum without t shares of its s^SK."""
DISPUTES = "wrong key checks for n - t + 1 peers"
"""The ``bad-ciphertext`` variant that spoils the channel-key checks sent with the
ciphertexts (not the ciphertexts) for n - t + 1 peers: those pairs are disputed, which
leaves the attacker t - 1 holders of its shares. A dispute cannot say which of the two
deviated, so this variant does not require the attacker to be named."""


# --- bad-ciphertext --------------------------------------------------------------------------


def _spoil_ciphertexts(entries: list[tuple[int, bytes]], how: str, threshold: int) -> list[tuple[int, bytes]]:
    if how == "garbage to every peer":
        return [(v, os.urandom(CIPHERTEXT_BYTES)) for v, _ in entries]
    if how == "garbage to one peer":
        return [(v, os.urandom(CIPHERTEXT_BYTES) if i == 0 else ct) for i, (v, ct) in enumerate(entries)]
    if how == WORST_CASE:  # n - t peers: only t - 1 honest holders of its shares are left
        spoiled = len(entries) + 1 - threshold
        return [(v, os.urandom(CIPHERTEXT_BYTES) if i < spoiled else ct) for i, (v, ct) in enumerate(entries)]
    (v0, c0), (v1, c1), *rest = entries  # misrouted: valid ciphertexts, receivers swapped
    return [(v0, c1), (v1, c0), *rest]


def _spoil_key_checks(checks: bytes, count: int) -> bytes:
    """The counted list of key-check records after the ciphertexts, its first ``count`` random."""
    if len(checks) < 4:
        return checks  # a protocol without key checks: nothing to spoil
    size = (len(checks) - 4) // max(1, int.from_bytes(checks[:4], "big"))
    records = [checks[4 + i * size : 4 + (i + 1) * size] for i in range(int.from_bytes(checks[:4], "big"))]
    spoiled = [os.urandom(size) if i < count else r for i, r in enumerate(records)]
    return checks[:4] + b"".join(spoiled)


def _bad_ciphertext_class(how: str) -> type[ClientRound]:
    class BadCiphertexts(ClientRound):
        """A client whose ShareKeys ciphertexts are spoiled after it sealed them."""

        def handle(self, message: bytes) -> bytes:
            stage = self.stage
            reply = super().handle(message)
            if stage != stages.SHARE_KEYS:
                return reply
            body = body_of(reply)
            count = int.from_bytes(body[32:36], "big")
            size = wire.CIPHERTEXT_ENTRY.size
            entries = [wire.CIPHERTEXT_ENTRY.unpack_from(body, 36 + i * size) for i in range(count)]
            rest = body[36 + count * size :]  # what follows the ciphertexts (key checks)
            if how == DISPUTES:
                spoiled_entries, rest = entries, _spoil_key_checks(rest, len(entries) + 2 - self.params.threshold)
            else:
                spoiled_entries = _spoil_ciphertexts(entries, how, self.params.threshold)
            spoiled = body[:32] + wire.pack_list(wire.CIPHERTEXT_ENTRY, spoiled_entries) + rest
            return rebody(reply, spoiled)

    return BadCiphertexts


def _summary(accounts: list[tuple[str, bool, str]]) -> str:
    """"held: a, b; did not hold: c (why); d (why)" over the rounds of one scenario."""
    held = [how for how, ok, _ in accounts if ok]
    failed = [f"{how} ({short(account, 120)})" for how, ok, account in accounts if not ok]
    parts = [f"held: {', '.join(held)}"] if held else []
    if failed:
        parts.append(f"did not hold: {'; '.join(failed)}")
    return "; ".join(parts)


def _judge_robust_round(rnd: MemoryRound, attacker: int, must_name: bool = True) -> tuple[bool, str]:
    """(whether the round held, a short account: outcome, who was named)."""
    server = rnd.server
    named = rejections(server)
    blamed = sorted({sender for sender, _, _, _ in named})
    honest = [u for u in rnd.params.client_ids if u != attacker]
    innocent = [u for u in blamed if u != attacker]
    lost = [u for u in honest if u not in server.survivors]
    verdicts = sorted({f"{verdict} at {stage}" for sender, stage, _, verdict in named if sender == attacker})
    held = (not server.aborted) and rnd.exact() and (attacker in blamed or not must_name) and not innocent and not lost
    if server.aborted:
        account = f"aborted: {short(server.abort_reason, 70)}"
    else:
        account = "exact sum" if rnd.exact() else "WRONG sum"
    account += f"; attacker {'named ' + ', '.join(verdicts) if verdicts else 'not named'}"
    if innocent:
        account += f"; honest clients blamed: {innocent}"
    if lost:
        account += f"; honest clients excluded: {lost[:6]}"
    return held, account


def bad_ciphertext(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """Three rounds with one client's share ciphertexts spoiled; BROKEN if any round does not hold."""
    t = honest_threshold(clients, threat_model)
    accounts = []
    for how in ("garbage to every peer", "garbage to one peer", "misrouted to another peer", WORST_CASE, DISPUTES):
        params = protocol_params(clients, t, threat_model)
        rnd = MemoryRound(params, classes={ATTACKER: _bad_ciphertext_class(how)})
        rnd.finish()
        accounts.append((how, *_judge_robust_round(rnd, ATTACKER, must_name=how != DISPUTES)))
    held = [how for how, ok, _ in accounts if ok]
    verdict = HOLDS if len(held) == len(accounts) else BROKEN
    shown = next(((how, a) for how, ok, a in accounts if not ok), accounts[0][::2])
    figure = f"{len(held)} of {len(accounts)} rounds held; {shown[0]}: {shown[1]}"
    return AttackResult(
        "bad-ciphertext", threat_model, verdict, short(figure, 160),
        f"client {ATTACKER} attacks, t={t} of n={clients}; {_summary(accounts)}",
    )


# --- false-accusation -----------------------------------------------------------------------------


def _false_accuser_class(count: int) -> type[ClientRound]:
    class FalseAccuser(ClientRound):
        """A client that reports the shares of its first ``count`` peers as unopenable (they open)."""

        def _open(self, peer: int, ciphertext: bytes) -> tuple[bytes, bytes]:
            shares = super()._open(peer, ciphertext)  # it can open them: the accusation is a lie
            victims = [v for v in sorted(self._roster) if v != self.client_id][:count]
            if peer in victims:
                raise ValueError("pretends it cannot open them")
            return shares

    return FalseAccuser


def false_accusation(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """A client accuses honest peers of bad shares (one peer, then n - t peers); BROKEN if an
    honest client is excluded or named, or the round does not complete exactly."""
    n = clients
    t = honest_threshold(n, threat_model)
    accounts = []
    for how, count in (("one peer accused", 1), ("n - t peers accused", n - t)):
        params = protocol_params(n, t, threat_model)
        rnd = MemoryRound(params, classes={ATTACKER: _false_accuser_class(count)})
        rnd.finish()
        accounts.append((how, *_judge_robust_round(rnd, ATTACKER)))
    held = [how for how, ok, _ in accounts if ok]
    verdict = HOLDS if len(held) == len(accounts) else BROKEN
    how, shown = next(((how, a) for how, ok, a in accounts if not ok), accounts[0][::2])
    return AttackResult(
        "false-accusation", threat_model, verdict, short(f"{len(held)} of {len(accounts)} rounds held; {how}: {shown}", 170),
        f"client {ATTACKER} accuses, t={t} of n={n}; {_summary(accounts)}",
    )


# --- bad-share ---------------------------------------------------------------------------------


def _random_share() -> bytes:
    return share_to_bytes(random_field_elements((LIMBS,)))


def _bad_share_class(how: str) -> type[ClientRound]:
    class BadShares(ClientRound):
        """A holder whose Unmasking reply reveals wrong shares."""

        def handle(self, message: bytes) -> bytes:
            stage = self.stage
            reply = super().handle(message)
            if stage != stages.UNMASKING:
                return reply
            body = body_of(reply)
            count = int.from_bytes(body[:4], "big")
            size = wire.REVEALED_SHARE.size
            entries = [wire.REVEALED_SHARE.unpack_from(body, 4 + i * size) for i in range(count)]
            spoiled = []
            done = False
            for peer, kind, share in entries:
                wrong = (
                    how in ("every share wrong", TIGHT)
                    or (how == "one wrong b-share" and kind == wire.KIND_B and peer != self.client_id and not done)
                    or (how == "wrong s^SK-share of a dropped client" and kind == wire.KIND_SK and not done)
                )
                if wrong:
                    done = True
                spoiled.append((peer, kind, _random_share() if wrong else share))
            rest = body[4 + count * size :]  # what follows the shares (pairwise keys), untouched
            return rebody(reply, wire.pack_list(wire.REVEALED_SHARE, spoiled) + rest)

    return BadShares


def bad_share(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """Rounds where client 1 reveals wrong shares; BROKEN unless each completes with the exact sum."""
    n = clients
    t = honest_threshold(n, threat_model)
    accounts = []
    for how in ("one wrong b-share", "every share wrong", "wrong s^SK-share of a dropped client", TIGHT):
        if "dropped" in how and n - 2 < t:  # survivors less the bad holder: fewer than t good shares exist
            accounts.append((how, True, f"skipped: n - 2 = {n - 2} good holders < t = {t}"))
            continue
        params = protocol_params(n, t, threat_model)
        rnd = MemoryRound(params, classes={BAD_HOLDER: _bad_share_class(how)})
        drops = None
        if "dropped" in how:
            drops = {stages.MASKED_INPUT_COLLECTION: {n}}
        elif how == TIGHT:  # t + 1 survivors: exactly t good shares of every secret
            drops = {stages.MASKED_INPUT_COLLECTION: set(range(t + 2, n + 1))}
        server = rnd.finish(drops)
        named = sorted({f"client {s} {v}" for s, stage, _, v in rejections(server) if stage == stages.UNMASKING})
        ok = not server.aborted and rnd.exact()
        if server.aborted:
            account = f"aborted: {short(server.abort_reason, 80)}"
        else:
            account = ("exact sum" if ok else "WRONG sum") + f" of {len(server.survivors)}"
        account += f"; named: {', '.join(named) if named else 'nobody'}"
        accounts.append((how, ok, account))
    held = sum(ok for _, ok, _ in accounts)
    verdict = HOLDS if held == len(accounts) else BROKEN
    how, shown = next(((how, a) for how, ok, a in accounts if not ok), accounts[0][::2])
    return AttackResult(
        "bad-share", threat_model, verdict, short(f"{held} of {len(accounts)} rounds completed exactly; {how}: {shown}", 160),
        f"client {BAD_HOLDER} reveals wrong shares, t={t} of n={n}; {_summary(accounts)}",
    )


# --- out-of-range-input -------------------------------------------------------------------------


DIM = 8


def _honest_codes(codec, n: int, seed: int) -> dict[int, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)  # test data, not secret
    rounding = secret_random()  # the rounding coins, as an honest client draws them
    codes = {}
    for u in range(1, n + 1):
        update = torch.rand(DIM, generator=generator) * codec.clip_range  # in [0, c]
        codes[u] = as_ring_array(codec.encode(update, rounding.key())).copy()
    return codes


def _checked(codec, params, server) -> tuple[bool, torch.Tensor | None, str]:
    """(flagged, what would be applied, how) with the server's decode-time check."""
    from fedsim.secure_sum.exchange import SumCode, checked_sum
    from fedsim.secure_sum.stages import RoundOutcome

    outcome = RoundOutcome(params.client_ids, tuple(server.survivors), False, None)
    checked, total = checked_sum(SumCode(fixed=codec), server.result, outcome)
    flagged = total is None and checked.aborted and checked.corrupted
    return flagged, total, checked.abort_reason or "passed"


def out_of_range_input(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """Unclipped and wrapping ring values in one client's input; BROKEN unless both sums are flagged."""
    n = clients
    t = honest_threshold(n, threat_model)
    config = secure_sum_config(threat_model, clip_range=1.0)
    codec = config.codec(n)
    attacker = n
    half = 1 << (codec.modulus_bits - 1)
    beyond = round((n + 1) * codec.clip_range * codec.scale)
    cases = {
        "control": None,
        f"+{(n + 1) * codec.clip_range:g} on coordinate 0": (0, beyond),
        f"2^{codec.modulus_bits - 1} on coordinate 1": (1, half),
    }
    results = []
    for i, (what, poison) in enumerate(cases.items()):
        params = protocol_params(n, t, threat_model, dim=DIM, modulus_bits=codec.modulus_bits)
        codes = _honest_codes(codec, n, seed=i)
        if poison is not None:
            coordinate, value = poison
            codes[attacker][coordinate] = value % (1 << codec.modulus_bits)
        rnd = MemoryRound(params, inputs=codes)
        server = rnd.finish()
        if server.aborted:
            results.append((what, poison, None, f"round aborted: {short(server.abort_reason, 60)}"))
            continue
        flagged, _applied, how = _checked(codec, params, server)
        decoded = codec.decode_sum(server.result)
        coordinate = poison[0] if poison is not None else 0
        results.append((what, poison, flagged, f"decoded {float(decoded[coordinate]):+.3f} (bound +-{n * codec.clip_range:g}): {short(how, 70)}"))
    control = results[0]
    attacks = results[1:]
    caught = [r for r in attacks if r[2]]
    control_ok = control[2] is False
    verdict = HOLDS if len(caught) == len(attacks) and control_ok else BROKEN
    missed = [r for r in attacks if not r[2]]
    if verdict == HOLDS:
        figure = f"{len(caught)} of {len(attacks)} out-of-range sums flagged and not applied; honest control passed"
    elif missed:
        figure = f"{len(caught)} of {len(attacks)} out-of-range sums flagged; {missed[0][0]}: {missed[0][3]}"
    else:
        figure = f"the honest control round was flagged too: {control[3]}"
    detail = "; ".join(f"{what}: {account}" for what, _, _, account in results)
    return AttackResult(
        "out-of-range-input", threat_model, verdict, short(figure, 170),
        f"client {attacker} masks ring values outside the code, clip {codec.clip_range:g}, n={n}; {short(detail, 300)}",
    )
