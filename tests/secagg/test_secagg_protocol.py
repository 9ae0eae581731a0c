"""The secagg protocol end to end: sums with dropouts, aborts, refusals, the server's view."""

from __future__ import annotations

import math
import os
import re
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.agreement import pairwise_mask_key, public_key_bytes, self_mask_key
from secagg.graph import NeighbourGraph
from secagg.masking import add_masks_, pairwise_mask_sign
from secagg.messages import (
    ACCUSATION_KEYED,
    HEADER,
    ID,
    REQUEST,
    SERVER_ID,
    TWO_COUNTS,
    pack_message,
)
from secagg.protocol import ClientRound, ProtocolError, ProtocolParams, ServerRound, run_in_memory
from secagg.stages import ADVERTISE_KEYS, CONSISTENCY_CHECK, MASKED_INPUT_COLLECTION, SHARE_KEYS, STAGES, UNMASKING
from secagg.shamir import evaluation_points, join_limbs, lagrange_at_zero, reconstruct, share_from_bytes
from tests.support import REPO_ROOT
from tests.support.stats import chi_square_critical



def _params(
    n: int,
    threshold: int,
    *,
    neighbours: int | None = None,
    bits: int = 32,
    dim: int = 16,
    consistency_check: bool = False,
    round_idx: int = 1,
    session: bytes | None = None,
) -> ProtocolParams:
    return ProtocolParams(
        session=session or os.urandom(16),
        round_idx=round_idx,
        client_ids=tuple(range(1, n + 1)),
        dim=dim,
        threshold=threshold,
        modulus_bits=bits,
        neighbours=neighbours,
        consistency_check=consistency_check,
    )


def _inputs(params: ProtocolParams, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data, not secrets
    dtype = np.uint32 if params.modulus_bits == 32 else np.uint64
    return {
        u: rng.integers(0, np.iinfo(dtype).max, params.dim, dtype=dtype, endpoint=True)
        for u in params.client_ids
    }


def _plain_sum(inputs: dict[int, np.ndarray], ids) -> np.ndarray:
    first = next(iter(inputs.values()))
    total = np.zeros_like(first)
    for u in ids:
        total += inputs[u]  # numpy unsigned arithmetic wraps mod 2^k
    return total


class Round:
    """A round driven stage by stage, so tests can intercept and forge messages."""

    def __init__(self, params: ProtocolParams, seed: int = 0, *, zeros: bool = False) -> None:
        self.params = params
        self.inputs = _inputs(params, seed)
        if zeros:
            self.inputs = {u: np.zeros_like(x) for u, x in self.inputs.items()}
        self.server = ServerRound(params)
        self.clients = {u: ClientRound(params, u) for u in params.client_ids}
        for u, client in self.clients.items():
            client.set_input(self.inputs[u])
        self.messages = self.server.start()
        self.refused: set[int] = set()

    def advance(self, drop: set[int] = frozenset()) -> dict[int, bytes]:
        replies = {}
        for u, message in self.messages.items():
            if u not in drop:
                try:
                    replies[u] = self.clients[u].handle(message)
                except ProtocolError:
                    self.refused.add(u)
        self.messages = self.server.step(replies)
        return self.messages

    def run_to(self, stage: str, drops: dict[str, set[int]] | None = None) -> dict[int, bytes]:
        drops = drops or {}
        gone: set[int] = set()
        while self.server.stage != stage:
            gone |= drops.get(self.server.stage, set())
            self.advance(gone)
        return self.messages


# --- correctness with dropouts ---------------------------------------------------------


def _expected_full_graph(
    n: int, t: int, stage_of: dict[int, str], cc: bool
) -> tuple[set[int] | None, str | None]:
    """Survivors (or None and the stage of the abort) of a complete-graph round."""
    alive = set(range(1, n + 1))
    survivors = None
    for stage in STAGES:
        if stage == CONSISTENCY_CHECK and not cc:
            continue
        alive -= {u for u, s in stage_of.items() if s == stage}
        if len(alive) < t:
            return None, stage
        if stage == MASKED_INPUT_COLLECTION:
            survivors = set(alive)
    return survivors, None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_full_graph_sum_is_exact_or_round_aborts(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 9), label="n")
    t = data.draw(st.integers(1, n), label="t")
    bits = data.draw(st.sampled_from([32, 64]), label="bits")
    cc = data.draw(st.booleans(), label="consistency_check")
    stage_of = data.draw(
        st.dictionaries(st.integers(1, n), st.sampled_from(STAGES), max_size=n), label="dropouts"
    )
    params = _params(n, t, bits=bits, consistency_check=cc, dim=data.draw(st.integers(1, 40)))
    inputs = _inputs(params, seed=n * t)
    dropouts = {stage: {u for u, s in stage_of.items() if s == stage} for stage in STAGES}
    server = run_in_memory(params, inputs, dropouts)
    survivors, abort_stage = _expected_full_graph(n, t, stage_of, cc)
    assert server.done and server.rejections == []
    if survivors is None:
        assert server.aborted and server.result is None
        assert server.abort_reason.startswith(abort_stage) and "threshold" in server.abort_reason
    else:
        assert not server.aborted, server.abort_reason
        assert set(server.survivors) == survivors
        assert server.result.dtype == inputs[1].dtype
        assert np.array_equal(server.result, _plain_sum(inputs, survivors))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sparse_graph_sum_is_exact_or_round_aborts(data: st.DataObject) -> None:
    n = data.draw(st.integers(6, 24), label="n")
    k = data.draw(st.sampled_from([k for k in range(2, n - 1, 2)]), label="k")
    t = data.draw(st.integers(1, k + 1), label="t")
    cc = data.draw(st.booleans(), label="consistency_check")
    stage_of = data.draw(
        st.dictionaries(st.integers(1, n), st.sampled_from(STAGES), max_size=n // 3), label="dropouts"
    )
    params = _params(n, t, neighbours=k, consistency_check=cc)
    inputs = _inputs(params, seed=n + k)
    dropouts = {stage: {u for u, s in stage_of.items() if s == stage} for stage in STAGES}
    server = run_in_memory(params, inputs, dropouts)
    assert server.done and server.rejections == []
    if server.aborted:
        assert server.result is None and server.abort_reason
    else:
        gone_early = {
            u for u, s in stage_of.items() if STAGES.index(s) <= STAGES.index(MASKED_INPUT_COLLECTION)
        }
        assert not set(server.survivors) & gone_early and len(server.survivors) >= t
        assert np.array_equal(server.result, _plain_sum(inputs, server.survivors))
    if not stage_of:
        assert not server.aborted and server.survivors == params.client_ids


def test_secagg_plus_masks_only_with_neighbours_and_survives_dropouts() -> None:
    params = _params(40, 4, neighbours=6, dim=300)
    rnd = Round(params)
    graph = NeighbourGraph(params.session, params.round_idx, params.client_ids, 6)
    shares = rnd.run_to(MASKED_INPUT_COLLECTION, {SHARE_KEYS: {3}})
    for u, message in shares.items():
        (count,) = struct.unpack_from(">I", message, HEADER.size)
        assert count == len(set(graph.neighbours(u)) - {3})  # one ciphertext per live neighbour
    rnd.run_to("Done", {MASKED_INPUT_COLLECTION: {5, 17}, UNMASKING: {8}})
    assert not rnd.server.aborted, rnd.server.abort_reason
    expected = set(params.client_ids) - {3, 5, 17}
    assert set(rnd.server.survivors) == expected
    assert np.array_equal(rnd.server.result, _plain_sum(rnd.inputs, expected))


def test_below_threshold_aborts_with_reason_at_each_stage() -> None:
    params = _params(5, 4)
    for stage in (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT_COLLECTION, UNMASKING):
        server = run_in_memory(params, _inputs(params), {stage: {1, 2}})
        assert server.aborted and server.result is None and server.survivors == ()
        assert server.abort_reason.startswith(stage), server.abort_reason
        assert "threshold 4" in server.abort_reason
        assert server.step({}) == {}


def test_lagrange_coefficients_computed_once_per_holder_set() -> None:
    params = _params(12, 6, dim=8)
    server = run_in_memory(params, _inputs(params), {MASKED_INPUT_COLLECTION: {2, 9}})
    assert not server.aborted
    assert server.lagrange.misses == 1  # 10 b's and 2 s^SK's from the same 6 holders


def test_weighted_mean_through_the_protocol() -> None:
    import torch

    from secagg.encoding import WeightedMeanCodec, as_ring_array

    codec = WeightedMeanCodec(clip_range=1.0, max_weight=1000, num_parties=4, modulus_bits=64)
    xs = {u: torch.full((3,), 0.1 * u, dtype=torch.float64) for u in (1, 2, 3, 4)}
    weights = {1: 10, 2: 0, 3: 30, 4: 999}
    params = _params(4, 3, bits=64, dim=4)
    inputs = {u: as_ring_array(codec.encode(xs[u], weights[u], bytes([u]) * 32)) for u in xs}
    server = run_in_memory(params, inputs, {MASKED_INPUT_COLLECTION: {4}})
    mean, total = codec.decode_mean(server.result)
    assert total == 40
    assert torch.allclose(mean, torch.full((3,), (10 * 0.1 + 30 * 0.3) / 40), atol=1e-6)


def test_contract_surface_and_stage_progression() -> None:
    params = _params(3, 2, consistency_check=True)
    rnd = Round(params)
    seen = []
    while rnd.messages:
        seen.append((rnd.server.stage, rnd.clients[1].stage))
        rnd.advance()
    assert seen == [(s, s) for s in STAGES]
    assert rnd.server.done and not rnd.server.aborted and rnd.server.abort_reason is None
    assert (rnd.server.stage, rnd.clients[1].stage) == ("Done", "Done")
    assert set(rnd.server.stage_seconds) == set(STAGES)
    assert [stage for stage, _, _ in rnd.server.transcript] == [s for s in STAGES for _ in range(3)]


def test_inputs_and_dropouts_are_validated() -> None:
    params = _params(3, 2, dim=5)
    client = ClientRound(params, 1)
    with pytest.raises(ValueError, match="shape"):
        client.set_input(np.zeros(4, np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        client.set_input(np.zeros(5, np.uint64))
    client.set_input(np.full(5, -1, np.int32))  # same width, viewed as unsigned
    with pytest.raises(ValueError, match="cohort"):
        ClientRound(params, 4)
    with pytest.raises(ValueError, match="stage names"):
        run_in_memory(params, _inputs(params), {"Masking": {1}})
    with pytest.raises(ValueError, match="missing"):
        run_in_memory(params, {1: np.zeros(5, np.uint32)})
    with pytest.raises(ValueError, match="NeighbourGraph of these params"):
        ServerRound(params, graph=NeighbourGraph(bytes(16), 1, params.client_ids))


# --- refusals and rejections -------------------------------------------------------------


def _unmasking_request(params: ProtocolParams, receiver: int, b_ids, sk_ids) -> bytes:
    body = TWO_COUNTS.pack(len(b_ids), len(sk_ids)) + b"".join(ID.pack(v) for v in (*b_ids, *sk_ids))
    body += struct.pack(">I", 0)  # no pairwise keys asked for
    return pack_message(UNMASKING, REQUEST, params.session, params.round_idx, SERVER_ID, receiver, body)


def test_client_refuses_both_shares_of_one_peer() -> None:
    params = _params(6, 3)
    rnd = Round(params)
    rnd.run_to(UNMASKING, {MASKED_INPUT_COLLECTION: {6}})
    forged = _unmasking_request(params, 1, (1, 2, 3, 4, 5), (5,))
    with pytest.raises(ProtocolError) as info:
        rnd.clients[1].handle(forged)
    error = info.value
    assert (error.sender, error.stage, error.receiver) == (SERVER_ID, UNMASKING, 1)
    assert "both the b-share and the s^SK-share of client 5" in str(error)
    with pytest.raises(ProtocolError, match="round is over"):
        rnd.clients[1].handle(rnd.messages[1])  # a refusing client is out of the round


def test_client_refuses_below_threshold_and_own_key_and_unknown_peers() -> None:
    params = _params(6, 4)
    rnd = Round(params)
    rnd.run_to(UNMASKING)
    cases = [
        ((1, 2, 3), (), "below threshold 4"),
        ((1, 3, 4, 5), (2,), "own s^SK-share"),
        ((1, 2, 3, 4, 7), (), "never shared with it"),
        ((3, 2, 1, 4), (), "not sorted"),
    ]
    for client, (b_ids, sk_ids, reason) in zip((1, 2, 3, 4), cases):
        with pytest.raises(ProtocolError, match=re.escape(reason)):
            rnd.clients[client].handle(_unmasking_request(params, client, b_ids, sk_ids))
    # an honest request still succeeds for the others
    rnd.advance(drop={1, 2, 3, 4})
    assert rnd.server.aborted and "2 shares, threshold 4" in rnd.server.abort_reason


def _accused_in(params: ProtocolParams, reply: bytes) -> list[int]:
    """The senders a MaskedInputCollection reply reports (after the masked vector)."""
    tail = reply[HEADER.size + params.dim * params.word_bytes :]
    (count,) = struct.unpack_from(">I", tail)
    size = ACCUSATION_KEYED.size
    return [ACCUSATION_KEYED.unpack_from(tail, 4 + i * size)[0] for i in range(count)]


def test_tampered_share_ciphertext_is_reported_not_refused() -> None:
    params = _params(4, 2)
    rnd = Round(params)
    messages = rnd.run_to(MASKED_INPUT_COLLECTION)
    tampered = bytearray(messages[1])
    tampered[HEADER.size + 4 + 8 + 20] ^= 0x01  # a bit inside the first ciphertext (from client 2)
    reply = rnd.clients[1].handle(bytes(tampered))  # the client goes on ...
    assert _accused_in(params, reply) == [2]  # ... and reports the sender
    assert 2 not in rnd.clients[1]._shares and 3 in rnd.clients[1]._shares


def test_misrouted_share_ciphertext_is_reported() -> None:
    params = _params(4, 2)
    rnd = Round(params)
    messages = rnd.run_to(MASKED_INPUT_COLLECTION)
    # give client 3 the ciphertext that client 2 encrypted for client 1
    ct_for_1 = messages[1][HEADER.size + 4 + 8 : HEADER.size + 4 + 8 + 104]
    body = bytearray(messages[3][HEADER.size :])
    body[4 + 8 : 4 + 8 + 104] = ct_for_1
    forged = pack_message(MASKED_INPUT_COLLECTION, REQUEST, params.session, 1, SERVER_ID, 3, bytes(body))
    assert _accused_in(params, rnd.clients[3].handle(forged)) == [1]


def test_replayed_wrong_round_and_truncated_messages_are_rejected() -> None:
    params = _params(4, 2)
    rnd = Round(params)
    first = dict(rnd.messages)
    rnd.advance()
    with pytest.raises(ProtocolError, match=r"wrong stage AdvertiseKeys, expected ShareKeys \(replayed"):
        rnd.clients[1].handle(first[1])
    other_round = Round(_params(4, 2, round_idx=2, session=params.session))
    with pytest.raises(ProtocolError, match=r"wrong round 2, expected 1"):
        rnd.clients[2].handle(other_round.messages[2])
    with pytest.raises(ProtocolError, match="length field"):
        rnd.clients[3].handle(rnd.messages[3][:-1])
    with pytest.raises(ProtocolError, match="receiver field"):
        rnd.clients[4].handle(rnd.messages[3])
    with pytest.raises(ProtocolError, match="parameters differ"):
        ClientRound(_params(4, 3, session=params.session), 1).handle(first[1])


def test_server_rejects_bad_replies_without_raising() -> None:
    params = _params(8, 3)
    rnd = Round(params)
    good = {u: rnd.clients[u].handle(m) for u, m in rnd.messages.items()}
    replies = dict(good)
    replies[1] = good[1][:-3]  # wrong length
    replies[2] = good[3]  # claims another sender
    replies[3] = b"\x00" * 10  # garbage
    replies[99] = good[4]  # not in the cohort
    replies[5] = "not bytes"  # wrong type
    rnd.messages = rnd.server.step(replies)
    rejected = {sender: reason for sender, _stage, reason, _verdict in rnd.server.rejections}
    assert set(rejected) == {1, 2, 3, 99, 5}
    assert "length field" in rejected[1] and "sender field" in rejected[2]
    assert "shorter than" in rejected[3] and "no request" in rejected[99] and "must be bytes" in rejected[5]
    assert set(rnd.messages) == {4, 6, 7, 8}  # the rejected clients count as dropped
    assert all(r.stage == ADVERTISE_KEYS and r.verdict == "rejected" for r in rnd.server.rejections)
    assert len(rnd.server.transcript) == 9  # everything received, accepted or not


@settings(max_examples=60, deadline=None)
@given(
    stage=st.sampled_from(STAGES),
    position=st.integers(0, 10**6),
    mutation=st.sampled_from(["flip", "cut", "extend", "zero"]),
)
def test_server_never_raises_on_mutated_replies(stage: str, position: int, mutation: str) -> None:
    """A mutated reply is rejected, or makes a peer refuse, or makes the round abort;
    the sum of the survivors is never wrong (except a mutated masked input itself,
    whose integrity is the transport's job)."""
    params = _params(5, 2, dim=8, consistency_check=stage == CONSISTENCY_CHECK)
    rnd = Round(params)
    rnd.run_to(stage)
    replies = {u: rnd.clients[u].handle(m) for u, m in rnd.messages.items()}
    data = bytearray(replies[1])
    i = position % len(data)
    if mutation == "flip":
        data[i] ^= 1 << (position % 8)
    elif mutation == "cut":
        del data[i:]
    elif mutation == "extend":
        data += bytes(position % 7 + 1)
    else:
        data[i : i + 8] = bytes(len(data[i : i + 8]))
    replies[1] = bytes(data)
    rnd.messages = rnd.server.step(replies)
    while rnd.messages:
        rnd.advance()
    assert rnd.server.done
    for rejection in rnd.server.rejections:
        assert not rejection.reason.startswith("unparseable"), rejection
    corrupted_input = stage == MASKED_INPUT_COLLECTION and 1 in rnd.server.survivors  # y is not authenticated
    if not rnd.server.aborted and not corrupted_input:
        assert np.array_equal(rnd.server.result, _plain_sum(rnd.inputs, rnd.server.survivors))


def _split_unmasking(message: bytes):
    body = message[HEADER.size :]
    b_count, sk_count = TWO_COUNTS.unpack_from(body)
    ids = struct.unpack_from(f">{b_count + sk_count}Q", body, TWO_COUNTS.size)
    rest = body[TWO_COUNTS.size + 8 * len(ids) :]
    assert rest[-4:] == bytes(4)  # the list of pairwise keys asked for: none here
    return ids[:b_count], ids[b_count:], rest[:-4]


def test_consistency_check_catches_a_server_with_two_stories() -> None:
    params = _params(6, 3, consistency_check=True)
    rnd = Round(params)
    rnd.run_to(CONSISTENCY_CHECK, {MASKED_INPUT_COLLECTION: {6}})
    # the server tells client 2 that client 5 dropped (to get 5's s^SK-shares from 2)
    body = b"".join([struct.pack(">I", 4)] + [ID.pack(v) for v in (1, 2, 3, 4)])
    rnd.messages[2] = pack_message(CONSISTENCY_CHECK, REQUEST, params.session, 1, SERVER_ID, 2, body)
    with pytest.raises(ProtocolError, match="omits this client"):
        rnd.clients[5].handle(pack_message(CONSISTENCY_CHECK, REQUEST, params.session, 1, SERVER_ID, 5, body))
    replies = {u: rnd.clients[u].handle(m) for u, m in rnd.messages.items() if u != 5}
    rnd.messages = rnd.server.step(replies)
    assert [r.sender for r in rnd.server.rejections] == [2]  # its signature is on another set
    b_ids, sk_ids, signatures = _split_unmasking(rnd.messages[1])
    assert (b_ids, sk_ids) == ((1, 2, 3, 4, 5), (6,))
    # replay client 2's signature to client 1 as if it had been accepted
    forged_sig = replies[2][HEADER.size :]
    (count,) = struct.unpack_from(">I", signatures)
    forged = struct.pack(">I", count + 1) + signatures[4:] + struct.pack(">Q", 2) + forged_sig + bytes(4)
    body = TWO_COUNTS.pack(5, 1) + b"".join(ID.pack(v) for v in b_ids + sk_ids) + forged
    with pytest.raises(ProtocolError, match="signature on the survivor set is invalid"):
        rnd.clients[1].handle(pack_message(UNMASKING, REQUEST, params.session, 1, SERVER_ID, 1, body))
    # asking client 3 for 5's s^SK-share contradicts the set it signed
    body = TWO_COUNTS.pack(4, 2) + b"".join(ID.pack(v) for v in (1, 2, 3, 4, 5, 6)) + signatures + bytes(4)
    with pytest.raises(ProtocolError, match="differs from the signed survivor set"):
        rnd.clients[3].handle(pack_message(UNMASKING, REQUEST, params.session, 1, SERVER_ID, 3, body))
    rnd.advance(drop={1, 3})
    assert rnd.server.aborted and "1 shares, threshold 3" in rnd.server.abort_reason


def test_consistency_check_with_a_pki() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from secagg.consistency import verify_key_bytes

    params = _params(4, 2, consistency_check=True)
    signing = {u: Ed25519PrivateKey.generate() for u in params.client_ids}
    pki = {u: verify_key_bytes(k) for u, k in signing.items()}
    server = ServerRound(params, verify_keys=pki)
    impostor = {**signing, 3: Ed25519PrivateKey.generate()}
    clients = {u: ClientRound(params, u, signing_key=impostor[u], verify_keys=pki) for u in params.client_ids}
    inputs = _inputs(params)
    for u, client in clients.items():
        client.set_input(inputs[u])
    messages = server.start()
    while messages:
        messages = server.step({u: clients[u].handle(m) for u, m in messages.items()})
    assert server.rejections == [(3, ADVERTISE_KEYS, "verify key of client 3 differs from the PKI's", "rejected")]
    assert server.survivors == (1, 2, 4)
    assert np.array_equal(server.result, _plain_sum(inputs, (1, 2, 4)))


# --- what the server sees -----------------------------------------------------------------


def _server_view(params: ProtocolParams, server: ServerRound):
    """Everything the transcript lets the server compute: masked inputs, advertised keys,
    and every secret it can reconstruct from the shares revealed to it."""
    masked, adverts, revealed = {}, {}, {}
    for stage, sender, data in server.transcript:
        body = memoryview(data)[HEADER.size :]
        if stage == ADVERTISE_KEYS:
            adverts[sender] = (bytes(body[:32]), bytes(body[32:64]))
        elif stage == MASKED_INPUT_COLLECTION:
            masked[sender] = np.frombuffer(body, dtype=f"<u{params.word_bytes}", count=params.dim)
        elif stage == UNMASKING:
            (count,) = struct.unpack_from(">I", body)
            for i in range(count):
                peer, kind, share = struct.unpack_from(">QB36s", body, 4 + i * 45)
                revealed.setdefault((kind, peer), {})[sender] = share_from_bytes(share)
    return masked, adverts, revealed


def _interpolate(shares: dict[int, np.ndarray], params: ProtocolParams) -> bytes | None:
    holders = sorted(shares)
    points = evaluation_points(params.client_ids, holders)
    limbs = reconstruct(np.stack([shares[h] for h in holders]), lagrange_at_zero(points))
    try:
        return join_limbs(limbs)
    except ValueError:
        return None


def test_transcript_alone_does_not_unmask_a_client() -> None:
    params = _params(6, 3, dim=4096)
    rnd = Round(params, zeros=True)
    rnd.run_to("Done", {MASKED_INPUT_COLLECTION: {6}})
    server = rnd.server
    assert np.array_equal(server.result, np.zeros(params.dim, np.uint32))
    masked, adverts, revealed = _server_view(params, server)
    u = 1
    assert (2, u) not in revealed  # no share of a survivor's mask key was ever revealed
    b_u = _interpolate(revealed[1, u], params)
    assert b_u is not None  # the self-mask seed is legitimately recoverable ...
    y = masked[u].copy()
    add_masks_(y, [(-1, self_mask_key(b_u, session=params.session, round_idx=1, owner=u))])
    sk_6 = X25519PrivateKey.from_private_bytes(_interpolate(revealed[2, 6], params))
    key_16 = pairwise_mask_key(sk_6, adverts[u][1], round_idx=1, id_lo=1, id_hi=6, session=params.session)
    add_masks_(y, [(-pairwise_mask_sign(u, 6), key_16)])  # ... and so are the dropped peer's masks
    # what is left is x_u (zeros) plus the masks with the other survivors: uniform, not x_u
    assert np.count_nonzero(y) > 0.99 * params.dim
    counts = np.bincount(y.view(np.uint8), minlength=256)
    expected = y.nbytes / 256
    assert float(((counts - expected) ** 2 / expected).sum()) < chi_square_critical(255, z=4.75)


def test_t_minus_one_colluders_cannot_unmask_a_survivor() -> None:
    params = _params(7, 4, dim=1024)
    rnd = Round(params, zeros=True)
    rnd.run_to(MASKED_INPUT_COLLECTION)
    colluders = (2, 3, 4)  # t - 1 = 3 clients hand the server everything they know
    mask_keys = {c: rnd.clients[c]._s_key for c in colluders}
    rnd.run_to("Done")
    masked, adverts, revealed = _server_view(params, rnd.server)
    victim = 1
    sk_shares = {c: share_from_bytes(rnd.clients[c]._shares[victim][1]) for c in colluders}
    guess = _interpolate(sk_shares, params)  # interpolating from t - 1 shares
    victim_pk = adverts[victim][1]
    assert guess is None or public_key_bytes(X25519PrivateKey.from_private_bytes(guess)) != victim_pk
    # best effort: remove the self mask and every mask the colluders share with the victim
    y = masked[victim].copy()
    b = _interpolate(revealed[1, victim], params)
    streams = [(-1, self_mask_key(b, session=params.session, round_idx=1, owner=victim))]
    for c in colluders:
        key = pairwise_mask_key(
            mask_keys[c], victim_pk, round_idx=1, id_lo=victim, id_hi=c, session=params.session
        )
        streams.append((-pairwise_mask_sign(victim, c), key))
    add_masks_(y, streams)
    assert np.count_nonzero(y) > 0.99 * params.dim  # masks with honest 5, 6, 7 remain


@pytest.mark.parametrize("neighbours", [None, 4])
def test_masked_vectors_look_uniform(neighbours: int | None) -> None:
    params = _params(8, 3, neighbours=neighbours, dim=16384)
    inputs = {u: np.full(params.dim, 7 * u, np.uint32) for u in params.client_ids}  # very non-uniform
    server = run_in_memory(params, inputs, {MASKED_INPUT_COLLECTION: {8}})
    masked, _, _ = _server_view(params, server)
    critical = chi_square_critical(255, z=4.26)  # per vector false alarm 1e-5, 7 vectors
    for u, y in masked.items():
        counts = np.bincount(y.view(np.uint8), minlength=256)
        expected = y.nbytes / 256
        assert float(((counts - expected) ** 2 / expected).sum()) < critical, u
        bits = np.unpackbits(y.view(np.uint8)).reshape(-1, 32).mean(axis=0)
        assert np.all(np.abs(bits - 0.5) < 4.5 * 0.5 / math.sqrt(params.dim)), u


# --- the README example --------------------------------------------------------------------


def test_readme_example_runs() -> None:
    text = (REPO_ROOT / "secagg" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "secagg/README.md must hold a python example"
    exec(compile(blocks[0], "secagg/README.md", "exec"), {"__name__": "readme_example"})
