"""The active threat model in memory: PKI checks, key substitution, two stories about
who dropped, malicious clients without revealed keys, and the ConsistencyCheck's
refusal of ids outside the cohort.  The semi-honest counterparts assert the attacks'
success where the README says they succeed (no PKI, no signed survivor set)."""

from __future__ import annotations

import itertools
import os
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg import consistency
from secagg import messages as wire
from secagg.agreement import (
    generate_private_key,
    pairwise_mask_key,
    public_key_bytes,
    seed_commitment,
    self_mask_key,
)
from secagg.graph import graph_for
from secagg.masking import add_masks_, pairwise_mask_sign
from secagg.messages import (
    HEADER,
    MALICIOUS,
    REJECTED,
    REQUEST,
    SERVER_ID,
    ProtocolError,
    pack_message,
)
from secagg.protocol import ClientRound, ProtocolParams, ServerRound
from secagg.shamir import (
    evaluation_points,
    join_limbs,
    lagrange_at_zero,
    reconstruct,
    shares_from_bytes,
)
from secagg.stages import (
    ADVERTISE_KEYS,
    CONSISTENCY_CHECK,
    MASKED_INPUT_COLLECTION,
    SHARE_KEYS,
    UNMASKING,
)
from tests.secagg.test_robust_clients import (
    GarbageSender,
    _assert_never_both,
    _sum,
    false_accuser,
)


def _params(n: int, t: int, *, active: bool = True, consistency_check: bool | None = None, dim: int = 32) -> ProtocolParams:
    cc = active if consistency_check is None else consistency_check
    return ProtocolParams(os.urandom(16), 1, tuple(range(1, n + 1)), dim, t, consistency_check=cc, active=active)


def _pki(ids) -> tuple[dict[int, Ed25519PrivateKey], dict[int, bytes]]:
    signing = {u: Ed25519PrivateKey.generate() for u in ids}
    return signing, {u: consistency.verify_key_bytes(k) for u, k in signing.items()}


class Round:
    """A round driven stage by stage (PKI when active), so tests can forge requests."""

    def __init__(self, params: ProtocolParams, classes=None, *, server_keys=None, client_keys=None) -> None:
        self.params = params
        self.signing, self.pki = _pki(params.client_ids)
        graph = graph_for(params)
        with_pki = params.active or params.consistency_check
        self.server = ServerRound(params, verify_keys=(server_keys or self.pki) if with_pki else None, graph=graph)
        self.clients = {}
        for u in params.client_ids:
            kwargs = {"graph": graph}
            if with_pki:
                kwargs.update(signing_key=self.signing[u], verify_keys=client_keys or self.pki)
            self.clients[u] = (classes or {}).get(u, ClientRound)(params, u, **kwargs)
        rng = np.random.default_rng(7)  # test data, not secrets
        self.inputs = {u: rng.integers(0, 2**32, params.dim, dtype=np.uint32) for u in params.client_ids}
        for u, client in self.clients.items():
            client.set_input(self.inputs[u])
        self.messages = self.server.start()
        self.refusals: dict[int, ProtocolError] = {}
        self.replies: dict[str, dict[int, bytes]] = {}

    def answer(self, messages) -> dict[int, bytes]:
        replies = {}
        for u, message in sorted(messages.items()):
            try:
                replies[u] = self.clients[u].handle(message)
            except ProtocolError as error:
                self.refusals[u] = error
        return replies

    def advance(self) -> None:
        stage = self.server.stage
        self.replies[stage] = self.answer(self.messages)
        self.messages = self.server.step(self.replies[stage])

    def run_to(self, stage: str) -> dict[int, bytes]:
        while self.server.stage != stage and not self.server.done:
            self.advance()
        return self.messages


def _request(params: ProtocolParams, stage: str, receiver: int, body: bytes) -> bytes:
    return pack_message(stage, REQUEST, params.session, params.round_idx, SERVER_ID, receiver, body)


# --- construction ------------------------------------------------------------------------------


def test_active_mode_needs_the_pki_and_the_identity_key() -> None:
    params = _params(4, 3)
    signing, pki = _pki(params.client_ids)
    with pytest.raises(ValueError, match="verify_keys.*signing_key"):
        ClientRound(params, 1)
    with pytest.raises(ValueError, match="missing signing_key"):
        ClientRound(params, 1, verify_keys=pki)
    with pytest.raises(ValueError, match="missing verify_keys"):
        ClientRound(params, 1, signing_key=signing[1])
    with pytest.raises(ValueError, match="not the identity of client 1"):
        ClientRound(params, 1, signing_key=signing[2], verify_keys=pki)
    with pytest.raises(ValueError, match="verify_keys"):
        ServerRound(params)
    ClientRound(params, 1, signing_key=signing[1], verify_keys=pki)  # all given: fine
    with pytest.raises(ValueError, match="requires consistency_check"):
        _params(4, 3, consistency_check=False)


def test_the_server_rejects_an_advert_with_no_pki_entry() -> None:
    params = _params(5, 3)
    rnd = Round(params)
    rnd.server._verify_keys.pop(4)
    while rnd.messages:
        rnd.advance()
    assert [(r.sender, r.stage, r.reason) for r in rnd.server.rejections] == [
        (4, ADVERTISE_KEYS, "client 4 has no verify key in the PKI")
    ]
    assert not rnd.server.aborted and rnd.server.survivors == (1, 2, 3, 5)
    assert np.array_equal(rnd.server.result, _sum(rnd.inputs, (1, 2, 3, 5)))


def test_a_client_refuses_a_roster_entry_with_no_pki_entry() -> None:
    params = _params(5, 3)
    rnd = Round(params)
    partial = {u: key for u, key in rnd.pki.items() if u != 5}  # client 1's PKI lacks client 5
    rnd.clients[1] = ClientRound(params, 1, signing_key=rnd.signing[1], verify_keys=partial)
    rnd.clients[1].set_input(rnd.inputs[1])
    rnd.run_to(MASKED_INPUT_COLLECTION)
    error = rnd.refusals[1]
    assert (error.sender, error.stage) == (SERVER_ID, SHARE_KEYS)
    assert "client 5 has no verify key in the PKI" in error.reason


# --- key substitution ------------------------------------------------------------------------


def _substituted_roster(rnd: Round, receiver: int, victim: int, variant: str) -> bytes:
    """The server's ShareKeys request to ``receiver`` with the victim's keys replaced by the server's."""
    params = rnd.params
    body = rnd.messages[receiver][HEADER.size :]
    (count,) = struct.unpack_from(">I", body)
    size = wire.ROSTER_ENTRY_SIGNED.size
    entries = [list(wire.ROSTER_ENTRY_SIGNED.unpack_from(body, 4 + i * size)) for i in range(count)]
    impostor = Ed25519PrivateKey.generate()
    for entry in entries:
        if entry[0] != victim:
            continue
        entry[1] = public_key_bytes(generate_private_key())
        entry[2] = public_key_bytes(generate_private_key())
        payload = consistency.advert_payload(
            session=params.session, round_idx=params.round_idx, client_id=victim, c_pk=entry[1], s_pk=entry[2]
        )
        if variant == "re-signed by the server":
            entry[3], entry[4] = consistency.verify_key_bytes(impostor), consistency.sign(impostor, payload)
        elif variant == "forged signature under the PKI key":
            entry[4] = consistency.sign(impostor, payload)
        # "victim's signature kept": entry[3:] unchanged
    return _request(params, SHARE_KEYS, receiver, wire.pack_records([wire.ROSTER_ENTRY_SIGNED.pack(*e) for e in entries]))


@pytest.mark.parametrize(
    ("variant", "refusal"),
    [
        ("victim's signature kept", "signature of client 6 on its keys is invalid"),
        ("re-signed by the server", "verify key of client 6 differs from the PKI's"),
        ("forged signature under the PKI key", "signature of client 6 on its keys is invalid"),
    ],
)
def test_key_substitution_is_refused_by_name_in_active_mode(variant: str, refusal: str) -> None:
    params = _params(6, 4)
    rnd = Round(params)
    rnd.run_to(SHARE_KEYS)
    forged = {u: _substituted_roster(rnd, u, 6, variant) for u in (1, 2, 3, 4, 5)}
    assert rnd.answer(forged) == {}
    for u in (1, 2, 3, 4, 5):
        error = rnd.refusals[u]
        assert (error.sender, error.stage, error.receiver) == (SERVER_ID, SHARE_KEYS, u)
        assert refusal in error.reason


def test_key_substitution_is_accepted_without_a_pki_the_documented_limit() -> None:
    params = _params(6, 4, active=False, consistency_check=False)
    rnd = Round(params)
    rnd.run_to(SHARE_KEYS)
    body = rnd.messages[1][HEADER.size :]
    (count,) = struct.unpack_from(">I", body)
    size = wire.ROSTER_ENTRY.size
    entries = [list(wire.ROSTER_ENTRY.unpack_from(body, 4 + i * size)) for i in range(count)]
    entries[-1][1:] = [public_key_bytes(generate_private_key()), public_key_bytes(generate_private_key())]
    forged = _request(params, SHARE_KEYS, 1, wire.pack_records([wire.ROSTER_ENTRY.pack(*e) for e in entries]))
    assert 1 in rnd.answer({1: forged})  # the client cannot tell: it encrypts to the server's key


# --- two stories about who dropped --------------------------------------------------------------


def _interpolate(params: ProtocolParams, shares: dict[int, bytes]) -> bytes | None:
    holders = sorted(shares)[: params.threshold]
    if len(holders) < params.threshold:
        return None
    limbs = reconstruct(shares_from_bytes(b"".join(shares[h] for h in holders)), lagrange_at_zero(evaluation_points(params.client_ids, holders)))
    try:
        return join_limbs(limbs)
    except ValueError:
        return None


def _two_stories(params: ProtocolParams, told_alive: tuple[int, ...], victim: int) -> tuple[Round, dict, dict]:
    """Tell ``told_alive`` (and the victim) that the victim survived, the others that it
    dropped; collect what they reveal of the victim's b and s^SK."""
    rnd = Round(params)
    everyone = params.client_ids
    without = tuple(u for u in everyone if u != victim)
    alive = set(told_alive) | {victim}
    story = {u: everyone if u in alive else without for u in everyone}
    rest = {u: b"" for u in everyone}
    if params.consistency_check:
        rnd.run_to(CONSISTENCY_CHECK)
        lies = {u: _request(params, CONSISTENCY_CHECK, u, wire.pack_list(wire.ID, [(v,) for v in story[u]])) for u in everyone}
        signed = rnd.answer(lies)
        for u in everyone:
            signers = [v for v in everyone if v in signed and story[v] == story[u]]
            rest[u] = wire.pack_list(wire.SIGNED_ID, [(v, signed[v][HEADER.size :]) for v in signers])
    else:
        rnd.run_to(UNMASKING)
    forged = {}
    for u in everyone:
        if u in rnd.refusals:
            continue
        b_ids = story[u]
        sk_ids = () if u in alive else (victim,)
        ids = b"".join(wire.ID.pack(v) for v in b_ids + sk_ids)
        body = wire.TWO_COUNTS.pack(len(b_ids), len(sk_ids)) + ids + rest[u] + wire.pack_list(wire.ID, [])
        forged[u] = _request(params, UNMASKING, u, body)
    b_shares, sk_shares = {}, {}
    for holder, reply in rnd.answer(forged).items():
        body = reply[HEADER.size :]
        (count,) = struct.unpack_from(">I", body)
        for i in range(count):
            peer, kind, share = wire.REVEALED_SHARE.unpack_from(body, 4 + i * wire.REVEALED_SHARE.size)
            if peer == victim:
                (b_shares if kind == wire.KIND_B else sk_shares)[holder] = share
    return rnd, b_shares, sk_shares


def _unmask_victim(rnd: Round, victim: int, b_shares: dict, sk_shares: dict) -> np.ndarray | None:
    params = rnd.params
    ctx = {"session": params.session, "round_idx": params.round_idx}
    b_seed, sk = _interpolate(params, b_shares), _interpolate(params, sk_shares)
    commitment = rnd.replies[SHARE_KEYS][victim][HEADER.size : HEADER.size + 32]
    if b_seed is None or sk is None or seed_commitment(b_seed, owner=victim, **ctx) != commitment:
        return None
    private = X25519PrivateKey.from_private_bytes(sk)
    adverts = {u: r[HEADER.size : HEADER.size + 64] for u, r in rnd.replies[ADVERTISE_KEYS].items()}
    if public_key_bytes(private) != adverts[victim][32:]:
        return None
    masked = np.frombuffer(rnd.replies[MASKED_INPUT_COLLECTION][victim], dtype="<u4", count=params.dim, offset=HEADER.size).copy()
    streams = [(-1, self_mask_key(b_seed, owner=victim, **ctx))]
    for w in params.client_ids:
        if w != victim:
            key = pairwise_mask_key(private, adverts[w][32:], id_lo=min(w, victim), id_hi=max(w, victim), **ctx)
            streams.append((-pairwise_mask_sign(victim, w), key))
    return add_masks_(masked, streams)


def test_dropout_lie_unmasks_the_victim_without_the_signed_consistency_check() -> None:
    """Semi-honest, no ConsistencyCheck, t = 3 <= n/2 (the reproduction of issue 10): the
    server recovers the victim's input exactly.  (At t = 4 > n/2 it cannot, with or
    without signatures: 6 holders cannot give 4 b-shares and 4 s^SK-shares, each
    revealing one kind; the signatures matter once t <= n/2 is excluded per story.)"""
    params = _params(6, 3, active=False, consistency_check=False)
    rnd, b_shares, sk_shares = _two_stories(params, (1, 2), victim=6)
    assert rnd.refusals == {}
    assert len(b_shares) == 3 and len(sk_shares) == 3
    recovered = _unmask_victim(rnd, 6, b_shares, sk_shares)
    assert recovered is not None and np.array_equal(recovered, rnd.inputs[6])


def test_dropout_lie_fails_in_active_mode_for_every_split() -> None:
    """n = 6, t = 4 > (6 + 0) / 2: whichever clients hear which story, at most one story
    gathers t signatures; the clients of the other refuse by name."""
    params = _params(6, 4)
    others = (1, 2, 3, 4, 5)
    for size in range(6):
        for told_alive in itertools.combinations(others, size):
            rnd, b_shares, sk_shares = _two_stories(params, told_alive, victim=6)
            assert len(b_shares) < 4 or len(sk_shares) < 4, told_alive
            if len(told_alive) == 3:  # the majority story is answered: the attack machinery is real
                assert len(b_shares) == 4 and sk_shares == {}
            if not told_alive:
                assert len(sk_shares) == 5 and b_shares == {}
            assert _unmask_victim(rnd, 6, b_shares, sk_shares) is None
            refused = {u: e.reason for u, e in rnd.refusals.items()}
            alive = set(told_alive) | {6}
            for group in (alive, set(params.client_ids) - alive):
                if len(group) < 4:  # a story with fewer than t signers: its clients refuse by name
                    for u in group:
                        assert "signers of the survivor set in its neighbourhood, below threshold 4" in refused[u]


# --- malicious clients in active mode ------------------------------------------------------------


def test_garbage_ciphertexts_in_active_mode_exclude_the_sender_as_rejected() -> None:
    params = _params(6, 4)
    rnd = Round(params, {3: GarbageSender})
    while rnd.messages:
        rnd.advance()
    server = rnd.server
    honest = (1, 2, 4, 5, 6)
    assert not server.aborted, server.abort_reason
    assert server.survivors == honest and np.array_equal(server.result, _sum(rnd.inputs, honest))
    assert {(r.sender, r.stage, r.verdict) for r in server.rejections} == {(3, SHARE_KEYS, REJECTED)}
    assert len(server.rejections) == 5
    assert all("cannot be checked" in r.reason for r in server.rejections)
    # no key travels with an accusation in active mode: (count, ids) only
    tail = rnd.replies[MASKED_INPUT_COLLECTION][1][HEADER.size + params.dim * 4 :]
    assert tail == struct.pack(">IQ", 1, 3)


def test_a_false_accusation_in_active_mode_excludes_the_accused_unnamed_as_malicious() -> None:
    """The documented price of not revealing keys to a possibly malicious server."""
    params = _params(6, 3)
    rnd = Round(params, {5: false_accuser(2)})
    while rnd.messages:
        rnd.advance()
    server = rnd.server
    assert not server.aborted and server.survivors == (1, 3, 4, 5, 6)
    assert np.array_equal(server.result, _sum(rnd.inputs, (1, 3, 4, 5, 6)))
    assert [(r.sender, r.verdict) for r in server.rejections] == [(2, REJECTED)]
    assert all(r.verdict != MALICIOUS for r in server.rejections)
    _assert_never_both(params, server, {5})


# --- ConsistencyCheck -----------------------------------------------------------------------------


def test_consistency_check_refuses_survivor_ids_outside_the_cohort() -> None:
    params = _params(5, 3)
    rnd = Round(params)
    rnd.run_to(CONSISTENCY_CHECK)
    body = wire.pack_list(wire.ID, [(v,) for v in (1, 2, 3, 4, 99)])
    with pytest.raises(ProtocolError, match=r"survivor ids \[99\] are not in the cohort"):
        rnd.clients[1].handle(_request(params, CONSISTENCY_CHECK, 1, body))


def test_consistency_check_refuses_a_survivor_it_accused() -> None:
    params = _params(6, 3)
    rnd = Round(params, {4: GarbageSender})
    rnd.run_to(CONSISTENCY_CHECK)
    body = wire.pack_list(wire.ID, [(v,) for v in params.client_ids])  # 4 announced as a survivor
    with pytest.raises(ProtocolError, match=r"survivors \[4\] sent it shares it reported as unopenable"):
        rnd.clients[1].handle(_request(params, CONSISTENCY_CHECK, 1, body))


def test_active_client_refuses_pairwise_keys_with_a_signed_survivor() -> None:
    params = _params(5, 3)
    rnd = Round(params)
    messages = rnd.run_to(UNMASKING)
    body = messages[1][HEADER.size :]
    assert body[-4:] == bytes(4)  # nothing asked for in an honest round without exclusions
    forged = _request(params, UNMASKING, 1, body[:-4] + wire.pack_list(wire.ID, [(2,)]))
    with pytest.raises(ProtocolError, match="b-share and the pairwise key of client 2"):
        rnd.clients[1].handle(forged)
