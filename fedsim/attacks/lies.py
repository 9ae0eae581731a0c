"""A server that deviates from the protocol to unmask one chosen client.

Bonawitz et al., CCS 2017, Fig. 4 and §6: the server removes a survivor's self mask
PRG(b_u) with t shares of b_u, and a dropped client's pairwise masks with t shares of
s_u^SK; a client whose b_u *and* s_u^SK the server learns is unmasked. Two ways to get
both, attacked here with the real client state machine:

- ``dropout-lie``: tell one group of clients that the victim survived (they reveal
  b-shares) and another that it dropped (they reveal s^SK-shares and, where the
  protocol has that fallback, their pairwise mask keys with it; the victim is relayed
  only that group's shares, so it masks with them alone and their keys are all the
  server needs). Only the signed ConsistencyCheck stops it, and only when two stories
  cannot both gather t honest signatures: t > (n + c)/2 (§6). So the attacker runs at
  the largest t the threat model's checks accept for which both groups fit (2t - 1 <= n
  with the pairwise-key fallback and no signatures, else 2t <= n), or, if they accept
  none, at the smallest they do.
- ``key-substitution``: hand the victim a roster whose peers' public keys are the
  server's own: the victim then encrypts its shares to the server and agrees its pairwise
  masks with it. Only adverts signed with identity keys from a PKI the server does not
  control stop it.

Under ``semi-honest`` both are BROKEN by design: that model trusts the server to follow
the protocol (no PKI, no ConsistencyCheck). Under ``active`` both must HOLD.
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedsim.attacks.registry import BROKEN, HOLDS, AttackResult
from fedsim.attacks.rounds import (
    MemoryRound,
    body_of,
    garbage_share,
    honest_threshold,
    masked_vector,
    max_ring_error,
    pairwise_key_ids,
    protocol_params,
    rebody,
    recover_secret,
    refusal_summary,
    request,
    revealed_pairwise_keys,
    revealed_shares,
    short,
    threshold_refusal,
    unmask,
    unmasking_body,
)
from secagg import consistency, stages
from secagg import messages as wire
from secagg.agreement import (
    generate_private_key,
    pairwise_mask_key,
    public_key_bytes,
    seed_commitment,
    share_encryption_keys,
)
from secagg.channel import open_shares, seal_shares
from secagg.params import ProtocolParams
from secagg.threat_models import ACTIVE

__all__ = ["dropout_lie", "key_substitution"]

logger = logging.getLogger(__name__)


def _refusals(rnd: MemoryRound, limit: int = 2) -> str:
    return refusal_summary(rnd.refusals, limit)


# --- dropout-lie -------------------------------------------------------------------------------


def _plan(n: int, threat_model: str) -> tuple[int, str]:
    """The t the lie is tried at, and how it was chosen.

    Two stories fit when the group told "the victim survived" (the victim and t - 1
    others: t b-shares of b_v) and the group told "it dropped" can both answer: without
    a ConsistencyCheck the second group needs t members for t s^SK-shares, or only
    t - 1 where the protocol reveals pairwise keys of dropped peers (each member gives
    its own key with the victim, and the victim is relayed only their shares, so it masks
    with them alone); with a ConsistencyCheck both groups need t signatures: 2t <= n.
    """
    signed = threat_model == ACTIVE
    accepted = [t for t in range(2, n + 1) if threshold_refusal(n, t, threat_model) is None]
    if not accepted:
        raise ValueError(f"no threshold is accepted for {n} clients under {threat_model}")
    slack = 0 if signed else 1  # survivors reveal pairwise keys with a peer announced dropped
    vulnerable = [t for t in accepted if 2 * t - slack <= n]
    bound = "n/2" if not slack else "(n + 1)/2"
    if vulnerable:
        t = max(vulnerable)
        return t, f"t={t} of n={n}, the largest t <= {bound} the {threat_model} checks accept"
    t = min(accepted)
    return t, f"the {threat_model} checks refuse every t <= {bound} = {(n + slack) // 2}; run at their smallest t={t}"


def _signatures(replies: dict[int, bytes], signers: list[int]) -> bytes:
    """The counted (signer, signature) list an Unmasking request carries: only the
    signatures on the story this group was told (any other fails its check)."""
    chosen = [(v, body_of(replies[v])) for v in signers if v in replies]
    return wire.pack_list(wire.SIGNED_ID, chosen)


def _relayed(message: bytes) -> list[int]:
    """The senders whose ciphertexts a MaskedInputCollection request carries."""
    body = body_of(message)
    count = int.from_bytes(body[:4], "big")
    size = wire.CIPHERTEXT_ENTRY.size
    return [wire.CIPHERTEXT_ENTRY.unpack_from(body, 4 + i * size)[0] for i in range(count)]


def _relay_only(message: bytes, senders: set[int]) -> bytes:
    """A MaskedInputCollection request keeping only the ciphertexts of ``senders``."""
    body = body_of(message)
    count = int.from_bytes(body[:4], "big")
    size = wire.CIPHERTEXT_ENTRY.size
    entries = [wire.CIPHERTEXT_ENTRY.unpack_from(body, 4 + i * size) for i in range(count)]
    rest = body[4 + count * size :]
    kept = [(v, ct) for v, ct in entries if v in senders]
    return rebody(message, wire.pack_list(wire.CIPHERTEXT_ENTRY, kept) + rest)


def dropout_lie(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """Two stories about whether the victim (client n) dropped; BROKEN if its input is recovered."""
    n = clients
    t, sizing = _plan(n, threat_model)
    params = protocol_params(n, t, threat_model)
    rnd = MemoryRound(params)
    victim = n
    others = [u for u in params.client_ids if u != victim]
    told_alive = [victim, *others[: t - 1]]  # reveal the b-shares of every survivor, the victim's too
    told_dropped = others[t - 1 :]  # reveal the victim's s^SK-share (and their pairwise keys with it)
    everyone = params.client_ids
    without_victim = tuple(u for u in everyone if u != victim)
    stories = {u: everyone for u in told_alive} | {u: without_victim for u in told_dropped}
    inputs = rnd.run_to(stages.MASKED_INPUT_COLLECTION)
    if len(told_dropped) >= t - 1:  # the victim masks with the second group only
        rnd.messages[victim] = _relay_only(inputs[victim], set(told_dropped))
    honest = rnd.run_to(stages.CONSISTENCY_CHECK if params.consistency_check else stages.UNMASKING)
    signatures = {u: b"" for u in everyone}
    if params.consistency_check:
        lies = {
            u: request(params, stages.CONSISTENCY_CHECK, u, wire.pack_list(wire.ID, [(v,) for v in stories[u]]))
            for u in honest
        }
        signed = rnd.answer(lies)
        for group in (told_alive, told_dropped):
            signers = [v for v in group if v in signed]
            for u in group:
                signatures[u] = _signatures(signed, signers)
    forged = {}
    for u in everyone:
        if u in rnd.refusals:
            continue
        dropped = u in told_dropped
        holds = {u, *_relayed(rnd.requests[stages.MASKED_INPUT_COLLECTION][u])}
        b_ids = tuple(v for v in stories[u] if v in holds)
        sk_ids = (victim,) if dropped else ()
        keys = pairwise_key_ids((victim,) if dropped else ())
        forged[u] = request(params, stages.UNMASKING, u, unmasking_body(b_ids, sk_ids, signatures[u] + keys))
    revealed = rnd.answer(forged)
    rnd.check_forgeries()
    b_shares, sk_shares, keys = {}, {}, {}
    for holder, reply in revealed.items():
        for peer, kind, share in revealed_shares(reply):
            if peer == victim:
                (b_shares if kind == wire.KIND_B else sk_shares)[holder] = share
        if victim in (found := revealed_pairwise_keys(reply)):
            keys[holder] = found[victim]
    error = _unmask_victim(rnd, victim, b_shares, sk_shares, keys)
    split = f"told {told_alive} that client {victim} survived, {told_dropped} that it dropped"
    got = f"{len(b_shares)} b-shares, {len(sk_shares)} s^SK-shares, {len(keys)} pairwise keys of client {victim}"
    if error == 0:
        return AttackResult(
            "dropout-lie", threat_model, BROKEN,
            f"victim's input recovered: max error 0 over {params.dim} coordinates ({got})",
            f"{sizing}; {split}: nothing ties the two stories together"
            + (" (two groups of t signatures on two survivor sets)" if params.consistency_check else " without a signed ConsistencyCheck"),
        )
    return AttackResult(
        "dropout-lie", threat_model, HOLDS,
        f"client {victim} not unmasked: {got} revealed (t={t})",
        f"{sizing}; {split}; refusals: {_refusals(rnd)}",
    )


def _unmask_victim(rnd: MemoryRound, victim: int, b_shares: dict, sk_shares: dict, keys: dict) -> int | None:
    """The max error of the victim's input unmasked from what was revealed, or None when
    b_v cannot be rebuilt (checked against the victim's commitment, as the server can) or
    a pairwise mask it added is neither revealed nor derivable from s_v^SK (checked
    against the advertised s_v^PK)."""
    params = rnd.params
    ctx = {"session": params.session, "round_idx": params.round_idx}
    b_seed = recover_secret(params, b_shares)
    commitment = body_of(rnd.replies[stages.SHARE_KEYS][victim])[:32]
    if b_seed is None or seed_commitment(b_seed, owner=victim, **ctx) != commitment:
        return None
    adverts = rnd.adverts()
    sk = None
    sk_bytes = recover_secret(params, sk_shares)
    if sk_bytes is not None:
        try:
            sk = X25519PrivateKey.from_private_bytes(sk_bytes)
        except ValueError:
            sk = None
        if sk is not None and public_key_bytes(sk) != adverts[victim][1]:
            sk = None
    peers = _relayed(rnd.requests[stages.MASKED_INPUT_COLLECTION][victim])  # whom the victim masked with
    pairwise = {}
    for w in peers:
        if w in keys:
            pairwise[w] = keys[w]
        elif sk is not None:
            pairwise[w] = pairwise_mask_key(sk, adverts[w][1], id_lo=min(victim, w), id_hi=max(victim, w), **ctx)
        else:
            return None
    masked = masked_vector(params, rnd.replies[stages.MASKED_INPUT_COLLECTION][victim])
    return max_ring_error(unmask(params, masked, victim, b_seed, pairwise), rnd.inputs[victim])


# --- key-substitution ----------------------------------------------------------------------------


_VARIANTS = {
    "semi-honest": ("unsigned roster with the server's keys",),
    "active": ("adverts signed with the server's own identity key", "peers' PKI verify keys, signatures forged"),
}


def key_substitution(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """The victim's roster carries the server's keys for every peer; BROKEN if its input is recovered."""
    n = clients
    t = honest_threshold(n, threat_model)
    outcomes = []
    for variant in _VARIANTS[threat_model]:
        params = protocol_params(n, t, threat_model)
        outcomes.append((variant, _substitute(params, victim=n, variant=variant)))
    broken = [(variant, result) for variant, result in outcomes if result == 0]
    tried = len(outcomes)
    if broken:
        variant, error = broken[0]
        return AttackResult(
            "key-substitution", threat_model, BROKEN,
            f"victim's input recovered: max error {error} ({len(broken)} of {tried} variants)",
            f"t={t} of n={n}; {variant}: client {n} encrypted its shares to the server and masked "
            "with the server's keys, trusting the roster",
        )
    reasons = "; ".join(
        f"{variant}: {short(result, 80) if isinstance(result, str) else f'unmasked with max error {result}'}"
        for variant, result in outcomes
    )
    return AttackResult(
        "key-substitution", threat_model, HOLDS,
        f"victim refused the substituted roster in {tried} of {tried} variants",
        f"t={t} of n={n}; {reasons}",
    )


def _substitute(params: ProtocolParams, *, victim: int, variant: str) -> int | str:
    """One attempt: the max error of the recovered input, or why the victim refused."""
    ctx = {"session": params.session, "round_idx": params.round_idx}
    rnd = MemoryRound(params)
    shares_requests = rnd.run_to(stages.SHARE_KEYS)
    if victim not in shares_requests:
        return f"the round never reached ShareKeys for client {victim}"
    peers = [w for w in rnd.graph.neighbours(victim) if w in rnd.adverts()]
    fake_c = {w: generate_private_key() for w in peers}
    fake_s = {w: generate_private_key() for w in peers}
    impostor = Ed25519PrivateKey.generate()
    c_v, s_v = rnd.adverts()[victim]
    entries = []
    for w in sorted([*peers, victim]):
        if w == victim:
            keys = (c_v, s_v)
        else:
            keys = (public_key_bytes(fake_c[w]), public_key_bytes(fake_s[w]))
        if not params.consistency_check:
            entries.append(wire.ROSTER_ENTRY.pack(w, *keys))
            continue
        if w == victim:
            advert = body_of(rnd.replies[stages.ADVERTISE_KEYS][victim])
            entries.append(wire.ROSTER_ENTRY_SIGNED.pack(w, *wire.ADVERT_SIGNED.unpack(advert)))
            continue
        payload = consistency.advert_payload(client_id=w, c_pk=keys[0], s_pk=keys[1], **ctx)
        if variant.startswith("adverts signed with the server's own"):
            verify_key = consistency.verify_key_bytes(impostor)
        else:
            verify_key = rnd.pki.verify_keys[w]
        entries.append(wire.ROSTER_ENTRY_SIGNED.pack(w, *keys, verify_key, consistency.sign(impostor, payload)))
    forged_roster = request(params, stages.SHARE_KEYS, victim, wire.pack_records(entries))
    reply = rnd.answer({victim: forged_roster}).get(victim)
    rnd.check_forgeries()
    if reply is None:
        return f"refused at ShareKeys: {rnd.refusals[victim].reason}"
    body = body_of(reply)
    count = int.from_bytes(body[32:36], "big")
    size = wire.CIPHERTEXT_ENTRY.size
    b_shares, receive = {}, {}
    for i in range(count):
        w, ciphertext = wire.CIPHERTEXT_ENTRY.unpack_from(body, 36 + i * size)
        to_victim, from_victim = share_encryption_keys(fake_c[w], c_v, own_id=w, peer_id=victim, **ctx)
        receive[w] = to_victim
        b_shares[w], _ = open_shares(from_victim, ciphertext, sender=victim, receiver=w, **ctx)
    b_seed = recover_secret(params, b_shares)
    if b_seed is None or seed_commitment(b_seed, owner=victim, **ctx) != body[:32]:
        return "the shares the victim encrypted to the server's keys do not reconstruct b"
    sealed = [
        (w, seal_shares(receive[w], sender=w, receiver=victim, b_share=garbage_share(), sk_share=garbage_share(), **ctx))
        for w in sorted(receive)
    ]
    forged_input = request(params, stages.MASKED_INPUT_COLLECTION, victim, wire.pack_list(wire.CIPHERTEXT_ENTRY, sealed))
    masked = rnd.answer({victim: forged_input}).get(victim)
    rnd.check_forgeries()
    if masked is None:
        return f"refused at MaskedInputCollection: {rnd.refusals[victim].reason}"
    pairwise = {
        w: pairwise_mask_key(fake_s[w], s_v, id_lo=min(victim, w), id_hi=max(victim, w), **ctx) for w in receive
    }
    recovered = unmask(params, masked_vector(params, masked), victim, b_seed, pairwise)
    return max_ring_error(recovered, rnd.inputs[victim])
