"""The server's side of one round: relays, checks, prunes, judges, reconstructs, unmasks.

Bonawitz et al., CCS 2017, Fig. 4 (server side of Rounds 0-4), with the sparse graph of
Bell et al., CCS 2020.  :meth:`ServerRound.step` takes the replies of the clients that
answered a stage; a client that did not answer, or whose reply is rejected, has dropped
for the rest of the round.  Client input never raises: every rejection is logged and
recorded in ``rejections`` as a :class:`~secagg.messages.Rejection` (sender, stage,
reason, verdict).  The server aborts (``aborted``, ``abort_reason``) whenever fewer than
t clients remain at a stage or a needed secret cannot be reconstructed; it never
releases a sum of fewer than t inputs.

Sets, in the paper's names: U1 advertised keys, U2 sent shares, U3 sent masked inputs
and were not excluded (the survivors whose inputs are summed), U4 signed U3
(ConsistencyCheck), U5 answered Unmasking.  For each survivor u the server reconstructs
b_u (checked against u's commitment) and removes PRG(b_u); for each v not in U3 with
whom a survivor masked, it reconstructs s_v^SK (checked against the advertised s_v^PK)
and removes v's pairwise masks from the sum.

Robustness to malicious clients (verdicts: ``rejected`` = the message was refused or
the client excluded without proof; ``malicious`` = the server holds proof):

- ShareKeys: each client sends, with its ciphertexts, checks of the pair's two
  channel keys (:func:`secagg.channel.key_check`).  A pair whose checks disagree has
  one deviating party, which the server cannot name: it relays neither ciphertext (the
  two neither hold each other's shares nor mask together) and records the pair in
  ``disputes``, not in ``rejections`` (both parties carry on).
- MaskedInputCollection: a client's reply names the senders whose shares it could not
  open or parse (it did not mask with them).  Semi-honest mode: the accusation reveals
  the channel's receive key; the server checks it against the agreed key check and
  opens the kept ciphertext.  Key off the check, or a ciphertext that opens and parses:
  the accuser lied, ``malicious`` (stage MaskedInputCollection).  Key on the check and a
  ciphertext that fails: the sender dealt garbage, ``malicious`` (stage ShareKeys).  No
  honest party can be named: an honest accuser reveals the key it checked and an
  honest sender's ciphertext opens under it.  Active mode: no key (the server may be
  the attacker), the accused sender is excluded as ``rejected``.  Either way exactly
  one of the two is excluded, so among survivors every pair masked together or not at
  all.  An excluded client counts as dropped after ShareKeys: its masked input is not
  summed, its s^SK is reconstructed from the holders of valid shares (those that
  masked with it), and nobody is asked for its b-share.
- Unmasking, pairwise-key fallback: for an excluded client, or a dropped one held by
  fewer than t of the clients asked, each survivor that masked with it is also asked
  for that pairwise mask key s_wv (the same "not a survivor" rule as s^SK-shares, of
  which it is a consequence).  When s_v^SK cannot be rebuilt, those keys remove v's
  masks, so a client dealing valid shares to fewer than t peers cannot abort the round;
  it aborts only if a survivor that masked with v also withholds its key.
- Unmasking: reconstruction uses every received share.  Fast path: the first t by
  holder id, then the check (commitment / s^PK); only if it fails,
  :func:`secagg.shamir.robust_reconstruct` (Berlekamp-Welch, then leave-one-out),
  accepting only a candidate that passes the check.  Attribution of a share off the
  accepted polynomial: the dealer (the secret's owner) may have dealt that holder a
  bad share, or the holder may have altered it, and one round cannot tell which; so
  the holder w is named ``rejected`` with both in the reason, never ``malicious``.
  Not even when w is the owner: two colluding holders can reveal shares on another
  polynomial with the same secret (it passes the check) through t - 2 honest shares,
  leaving the other honest shares off it; being off the accepted polynomial proves
  nothing against one party.  Holders named once are tried last for the following
  secrets.  The round aborts, naming whose secret, only when no candidate passes.
  Shares beyond the first t are not checked when the fast path passes (no extra work
  on the honest path).

Hooks for attack code (a subclass is a malicious server; see :mod:`secagg.protocol`):
the ``_after_<stage>`` methods (replies in, requests out), :meth:`ServerRound._send`,
:meth:`ServerRound._request_unmasking` and :meth:`ServerRound._unmasking_body`.

Assumption: the channels between the server and each client are authenticated and
reliable (e.g. TLS, or the run's transport on one host): the server judges the bytes it
received and relayed, so a ciphertext altered on the way to its receiver would make an
honest accuser look like a liar.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secagg import consistency
from secagg.agreement import (
    generate_private_key,
    load_public_key,
    pairwise_mask_key,
    public_key_bytes,
    seed_commitment,
    self_mask_key,
)
from secagg.channel import key_check, open_shares
from secagg.encoding import ring_dtype
from secagg.graph import NeighbourGraph, graph_for
from secagg import messages as wire
from secagg import stages
from secagg.masking import add_masks_, pairwise_mask_sign
from secagg.messages import MALICIOUS, REJECTED, ProtocolError, Reader, Rejection
from secagg.params import ProtocolParams
from secagg.shamir import (
    LagrangeCache,
    evaluation_points,
    join_limbs,
    reconstruct,
    robust_reconstruct,
    shares_from_bytes,
)

__all__ = ["ServerRound"]

_LOG = logging.getLogger(__name__)


class ServerRound:
    """The server in one round: ``start()``, then ``step(replies)`` per stage until ``done``.

    ``verify_keys``: the cohort's Ed25519 verify keys from a PKI (ConsistencyCheck;
    required when ``params.active``, ValueError otherwise): every advert is checked
    against it; ``keep_transcript``: record every received message in ``transcript`` (on
    by default, it holds every masked vector); ``graph``: a shared :class:`NeighbourGraph`.
    ``stage_seconds``: wall time of each stage's processing (replies in, requests out).
    ``rejections``: :class:`~secagg.messages.Rejection` entries in the order they were
    made; ``disputes``: (u, v, reason) of the pairs whose key checks disagreed.
    """

    def __init__(
        self,
        params: ProtocolParams,
        *,
        verify_keys: Mapping[int, bytes] | None = None,
        keep_transcript: bool = True,
        graph: NeighbourGraph | None = None,
    ) -> None:
        if not isinstance(params, ProtocolParams):  # validated when constructed (frozen)
            raise ValueError(f"params must be a ProtocolParams, got {type(params).__name__}")
        if params.active and verify_keys is None:
            raise ValueError("params.active requires verify_keys (the PKI) at the server too")
        self.params = params
        self._graph = graph_for(params, graph)
        self._wire = wire.Endpoint(params.session, params.round_idx, wire.SERVER_ID)
        self._verify_keys = dict(verify_keys) if verify_keys is not None else None
        self._keep_transcript = keep_transcript
        self.stage: str = stages.ADVERTISE_KEYS
        self.done = False
        self.aborted = False
        self.abort_reason: str | None = None
        self.result: np.ndarray | None = None
        self.survivors: tuple[int, ...] = ()
        self.transcript: list[tuple[str, int, bytes]] = []
        self.rejections: list[Rejection] = []
        self.disputes: list[tuple[int, int, str]] = []
        self.lagrange = LagrangeCache()
        self.stage_seconds: dict[str, float] = {}
        self._started = False
        self._expected: set[int] = set()
        self._adverts: dict[int, tuple] = {}  # U1: id -> (c_pk, s_pk[, vk, sig])
        self._rosters: dict[int, tuple[int, ...]] = {}
        self._mailbox: dict[int, dict[int, bytes]] = defaultdict(dict)  # receiver -> sender -> ciphertext
        self._checks: dict[int, np.ndarray] = {}  # sender -> its key-check records, roster order
        self._shared: set[int] = set()  # U2
        self._commitments: dict[int, bytes] = {}  # u -> commitment to b_u
        self._relayed: dict[int, tuple[int, ...]] = {}  # u -> senders whose ciphertexts went to u
        self._holds: dict[int, tuple[int, ...]] = {}  # u -> peers whose valid shares u holds (masked with)
        self._accused_by: dict[int, frozenset[int]] = {}  # u -> the senders u reported (when any)
        self._excluded: dict[int, str] = {}  # client -> why it was excluded (MaskedInputCollection)
        self._suspects: set[int] = set()  # holders that revealed a share off its polynomial
        self._sum: np.ndarray | None = None
        self._masked: set[int] = set()  # U3
        self._signatures: dict[int, bytes] = {}  # U4
        self._requested: dict[int, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        self._revealed: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # U5

    # --- public API ----------------------------------------------------------------------

    def start(self) -> dict[int, bytes]:
        """The AdvertiseKeys requests (the parameters' digest), one per cohort client."""
        if self._started:
            raise RuntimeError("start() was already called for this round")
        self._started = True
        digest = wire.DIGEST.pack(self.params.digest())
        return self._send(stages.ADVERTISE_KEYS, {u: digest for u in self.params.client_ids})

    def step(self, replies: Mapping[int, bytes]) -> dict[int, bytes]:
        """Consume the replies to the current stage; return the next stage's requests
        ({} once ``done``).  Clients absent from ``replies`` have dropped."""
        if not self._started:
            raise RuntimeError("call start() before step()")
        if self.done:
            return {}
        stage, start = self.stage, time.perf_counter()
        parse, advance = self._stage_handlers()[stage]
        accepted = {}
        for sender, data in replies.items():
            if self._keep_transcript:  # a copy of mutable buffers: the record must not change
                kept = bytes(data) if isinstance(data, (bytearray, memoryview)) else data
                self.transcript.append((stage, sender, kept))
            parsed = self._accept(sender, data, parse)
            if parsed is not None:
                accepted[sender] = parsed
        messages = advance(accepted)
        self.stage_seconds[stage] = time.perf_counter() - start
        _LOG.debug("server round %d %s: %.3f s", self.params.round_idx, stage, self.stage_seconds[stage])
        return messages

    # --- plumbing --------------------------------------------------------------------------

    def _stage_handlers(self) -> dict[str, tuple[Callable, Callable]]:
        return {
            stages.ADVERTISE_KEYS: (self._parse_advert, self._after_advertise_keys),
            stages.SHARE_KEYS: (self._parse_shares, self._after_share_keys),
            stages.MASKED_INPUT_COLLECTION: (self._parse_masked_input, self._after_masked_input_collection),
            stages.CONSISTENCY_CHECK: (self._parse_signature, self._after_consistency_check),
            stages.UNMASKING: (self._parse_revealed, self._after_unmasking),
        }

    def _accept(self, sender: object, data: object, parse: Callable) -> object | None:
        """Parsed reply, or None after recording why it was rejected."""
        stage = self.stage
        try:
            if sender not in self._expected:
                raise ProtocolError(sender, stage, "no request was sent to it at this stage", wire.SERVER_ID)
            reader = self._wire.open(data, stage, wire.REPLY, sender)
            parsed = parse(sender, reader)
            reader.end()
            return parsed
        except ProtocolError as error:
            self._reject(sender, stage, error.reason)
        except Exception as error:  # noqa: BLE001 - client input must never crash the server
            _LOG.exception("unexpected error while parsing %s reply of %r", stage, sender)
            self._reject(sender, stage, f"unparseable: {type(error).__name__}: {error}")
        return None

    def _reject(self, sender: object, stage: str, reason: str, verdict: str = REJECTED) -> None:
        _LOG.warning("round %d: %s client %s at %s: %s", self.params.round_idx, verdict, sender, stage, reason)
        self.rejections.append(Rejection(sender, stage, reason, verdict))

    def _ctx(self) -> dict[str, object]:
        return {"session": self.params.session, "round_idx": self.params.round_idx}

    def _send(self, stage: str, bodies: Mapping[int, bytes]) -> dict[int, bytes]:
        self.stage = stage
        self._expected = set(bodies)
        return {u: self._wire.pack(stage, wire.REQUEST, u, body) for u, body in bodies.items()}

    def _abort(self, reason: str) -> dict[int, bytes]:
        _LOG.warning("round %d aborted at %s: %s", self.params.round_idx, self.stage, reason)
        self.aborted = True
        self.abort_reason = f"{self.stage}: {reason}"
        self.done = True
        self.stage = stages.ABORTED
        self._expected = set()
        return {}

    def _quorum(self, members: set[int] | list[int], what: str) -> str | None:
        """Why the round cannot go on with ``members``, or None."""
        if len(members) < self.params.threshold:
            return f"{len(members)} clients {what}, below threshold {self.params.threshold}"
        return None

    def _viable(self, members: set[int], candidates: set[int]) -> set[int]:
        """Candidates with at least t of their closed neighbourhood in ``members``
        (the others would refuse for lack of a quorum)."""
        t = self.params.threshold
        return {u for u in candidates if len(members.intersection(self._graph.closed_neighbourhood(u))) >= t}

    # --- Round 0: AdvertiseKeys -----------------------------------------------------------

    def _parse_advert(self, sender: int, reader: Reader) -> tuple:
        signed = self.params.consistency_check
        advert = reader.take(wire.ADVERT_SIGNED if signed else wire.ADVERT)
        c_pk, s_pk = advert[0], advert[1]
        if c_pk == s_pk:
            raise reader.fail("c^PK equals s^PK")
        probe = generate_private_key()
        for name, key in (("c^PK", c_pk), ("s^PK", s_pk)):
            try:
                probe.exchange(load_public_key(key))
            except ValueError:
                raise reader.fail(f"{name} is not a usable X25519 public key (low order)") from None
        problem = signed and consistency.advert_problem(
            self.params.session, self.params.round_idx, sender, advert, self._verify_keys
        )
        if problem:
            raise reader.fail(problem)
        return advert

    def _after_advertise_keys(self, adverts: dict[int, tuple]) -> dict[int, bytes]:
        owners: dict[bytes, list[int]] = defaultdict(list)
        for u, advert in adverts.items():
            owners[advert[0]].append(u)
            owners[advert[1]].append(u)
        for key, users in owners.items():
            if len(users) > 1:
                for u in users:
                    if adverts.pop(u, None) is not None:
                        self._reject(u, stages.ADVERTISE_KEYS, f"public key also advertised by clients {users}")
        self._adverts = adverts
        u1 = set(adverts)
        active = self._viable(u1, u1)
        problem = self._quorum(active, "advertised keys with a quorum of neighbours")
        if problem:
            return self._abort(problem)
        layout = wire.ROSTER_ENTRY_SIGNED if self.params.consistency_check else wire.ROSTER_ENTRY
        entries = {v: layout.pack(v, *advert) for v, advert in adverts.items()}
        bodies = {}
        for u in sorted(active):
            self._rosters[u] = tuple(sorted(u1.intersection(self._graph.closed_neighbourhood(u))))
            bodies[u] = wire.pack_records([entries[v] for v in self._rosters[u]])
        return self._send(stages.SHARE_KEYS, bodies)

    # --- Round 1: ShareKeys -----------------------------------------------------------------

    def _parse_shares(self, sender: int, reader: Reader) -> tuple[bytes, list, np.ndarray]:
        receivers = [v for v in self._rosters[sender] if v != sender]
        (commitment,) = reader.take(wire.COMMITMENT)
        entries = reader.take_list(wire.CIPHERTEXT_ENTRY, len(receivers))
        if [v for v, _ in entries] != receivers:
            raise reader.fail(f"ciphertexts must go to its roster {receivers[:8]}..., in order")
        count, checks = reader.take_raw_list(wire.KEY_CHECKS, len(receivers))
        if count != len(receivers):
            raise reader.fail(f"{count} key-check records for {len(receivers)} ciphertexts")
        # a copy: the records are kept until MaskedInputCollection, the transport may reuse its buffer
        return commitment, entries, np.frombuffer(bytes(checks), dtype=np.uint64).reshape(count, wire.KEY_CHECKS.size // 8)

    def _after_share_keys(self, shares: dict[int, tuple[bytes, list, np.ndarray]]) -> dict[int, bytes]:
        for u, (commitment, entries, checks) in shares.items():
            self._commitments[u] = commitment
            self._checks[u] = checks
            for v, ciphertext in entries:
                self._mailbox[v][u] = ciphertext
        self._shared = set(shares)
        self._relayed = self._agreed_pairs()
        t = self.params.threshold
        active = {u for u in self._shared if len(self._relayed[u]) + 1 >= t}
        problem = self._quorum(active, "sent shares with a quorum of neighbours")
        if problem:
            return self._abort(problem)
        bodies = {}
        for u in sorted(active):
            inbox = self._mailbox[u]
            bodies[u] = wire.pack_list(wire.CIPHERTEXT_ENTRY, [(v, inbox[v]) for v in self._relayed[u]])
        return self._send(stages.MASKED_INPUT_COLLECTION, bodies)

    def _agreed_pairs(self) -> dict[int, tuple[int, ...]]:
        """For each u in U2, its neighbours in U2 whose key-check record for the pair equals
        u's (the pair's ciphertexts are relayed); a pair that differs is recorded once in
        ``disputes``.  One sort over all (u, v) records, no per-pair Python."""
        ids = np.asarray(self.params.client_ids, dtype=np.int64)
        senders = sorted(self._shared)
        receivers = [np.asarray([v for v in self._rosters[u] if v != u], dtype=np.int64) for u in senders]
        sizes = [r.size for r in receivers]
        if not sum(sizes):
            return {u: () for u in senders}
        pos_u = np.repeat(np.searchsorted(ids, np.asarray(senders, dtype=np.int64)), sizes)
        pos_v = np.searchsorted(ids, np.concatenate(receivers))
        key = np.minimum(pos_u, pos_v) * ids.size + np.maximum(pos_u, pos_v)
        records = np.concatenate([self._checks[u] for u in senders])
        order = np.argsort(key, kind="stable")
        paired = key[order][1:] == key[order][:-1]  # both directions of the pair were sent
        same = paired & np.all(records[order][1:] == records[order][:-1], axis=1)
        agreed = np.zeros(key.size, dtype=bool)
        first = np.flatnonzero(same)
        agreed[order[first]] = agreed[order[first + 1]] = True
        for i in np.flatnonzero(paired & ~same):
            u, v = sorted((int(ids[pos_u[order[i]]]), int(ids[pos_v[order[i]]])))
            reason = (
                f"clients {u} and {v} disagree on their share-channel keys: one of them deviated "
                "(the server cannot tell which); they exchange no shares and do not mask together"
            )
            _LOG.warning("server: dispute at %s: %s", stages.SHARE_KEYS, reason)
            self.disputes.append((u, v, reason))
        relayed, start = {}, 0
        for u, r in zip(senders, receivers):
            relayed[u] = tuple(r[agreed[start : start + r.size]].tolist())
            start += r.size
        return relayed

    def _sender_check(self, sender: int, receiver: int) -> bytes:
        """The sender's key check of the key sender -> receiver (from its ShareKeys record)."""
        receivers = [v for v in self._rosters[sender] if v != sender]
        record = self._checks[sender][receivers.index(receiver)].tobytes()
        half = wire.KEY_CHECKS.size // 2
        return record[:half] if sender < receiver else record[half:]

    # --- Round 2: MaskedInputCollection ---------------------------------------------------

    def _parse_masked_input(self, sender: int, reader: Reader) -> tuple[np.ndarray, list[tuple]]:
        dtype = ring_dtype(self.params.modulus_bits).newbyteorder("<")
        masked = np.frombuffer(reader.take_bytes(self.params.dim * self.params.word_bytes), dtype=dtype)
        relayed = self._relayed[sender]
        accusations = reader.take_list(wire.accusation_layout(self.params.active), len(relayed))
        accused = [record[0] for record in accusations]
        if accused and (any(b <= a for a, b in zip(accused, accused[1:])) or not set(accused) <= set(relayed)):
            raise reader.fail("accusations must name distinct senders of the shares relayed to it, in order")
        return masked, accusations

    def _after_masked_input_collection(self, masked: dict[int, tuple[np.ndarray, list[tuple]]]) -> dict[int, bytes]:
        for u in sorted(masked):
            for record in masked[u][1]:
                self._judge(u, record)
        for u, (_, accusations) in masked.items():
            self._holds[u] = self._relayed[u]
            if accusations:
                accused = self._accused_by[u] = frozenset(record[0] for record in accusations)
                self._holds[u] = tuple(v for v in self._relayed[u] if v not in accused)
        self._mailbox.clear()
        self._checks.clear()
        self._masked = set(masked) - set(self._excluded)
        problem = self._quorum(self._masked, "sent masked inputs and were not excluded")
        if problem:
            return self._abort(problem)
        total = np.zeros(self.params.dim, dtype=ring_dtype(self.params.modulus_bits))
        for u in self._masked:
            np.add(total, masked[u][0], out=total)
        self._sum = total
        if self.params.consistency_check:
            body = wire.pack_list(wire.ID, [(u,) for u in sorted(self._masked)])
            return self._send(stages.CONSISTENCY_CHECK, {u: body for u in sorted(self._masked)})
        return self._request_unmasking(self._masked)

    def _judge(self, accuser: int, record: tuple) -> None:
        """One accusation (module docstring): exclude the sender or the accuser."""
        accused = record[0]
        if self.params.active:
            self._exclude(
                accused,
                stages.SHARE_KEYS,
                f"client {accuser} reports that it cannot open the shares client {accused} sent it; in active "
                f"mode the accusation cannot be checked (no key is revealed to the server), so client "
                f"{accused} is excluded and neither is called malicious",
                REJECTED,
            )
            return
        key = record[1]
        ciphertext = self._mailbox[accuser][accused]
        if key_check(key) != self._sender_check(accused, accuser):
            self._exclude(
                accuser,
                stages.MASKED_INPUT_COLLECTION,
                f"false accusation against client {accused}: the revealed key is not the one both "
                "committed to in ShareKeys",
                MALICIOUS,
            )
            return
        try:
            open_shares(key, ciphertext, sender=accused, receiver=accuser, **self._ctx())
        except ValueError as exc:
            self._exclude(
                accused,
                stages.SHARE_KEYS,
                f"its share ciphertext to client {accuser} fails under the channel key both committed to "
                f"({exc}); reported by client {accuser}, verified by the server",
                MALICIOUS,
            )
            return
        self._exclude(
            accuser,
            stages.MASKED_INPUT_COLLECTION,
            f"false accusation against client {accused}: its share ciphertext opens and parses under "
            "the revealed key",
            MALICIOUS,
        )

    def _exclude(self, client: int, stage: str, reason: str, verdict: str) -> None:
        self._reject(client, stage, reason, verdict)
        self._excluded.setdefault(client, f"{verdict} at {stage}: {reason}")

    # --- Round 3: ConsistencyCheck --------------------------------------------------------

    def _parse_signature(self, sender: int, reader: Reader) -> bytes:
        (sig,) = reader.take(wire.SIGNATURE)
        payload = consistency.survivors_payload(
            session=self.params.session, round_idx=self.params.round_idx, survivors=sorted(self._masked)
        )
        if not consistency.verify(self._adverts[sender][2], sig, payload):
            raise reader.fail("invalid signature on the survivor set")
        return sig

    def _after_consistency_check(self, signatures: dict[int, bytes]) -> dict[int, bytes]:
        self._signatures = signatures
        problem = self._quorum(set(signatures), "signed the survivor set")
        if problem:
            return self._abort(problem)
        return self._request_unmasking(set(signatures))

    # --- Round 4: Unmasking ----------------------------------------------------------------

    def _request_unmasking(self, recipients: set[int]) -> dict[int, bytes]:
        """Ask each recipient u for b-shares of the survivors and s^SK-shares of the dropped
        among the peers whose shares it holds; skip those with fewer than t survivors.
        Also ask for u's pairwise keys with the dropped peers whose s^SK may not be
        rebuilt: the excluded ones, and those held by fewer than t recipients."""
        t = self.params.threshold
        requests, holders = {}, defaultdict(int)
        for u in sorted(recipients):
            holds = sorted(self._holds[u] + (u,))
            b_ids = tuple(v for v in holds if v in self._masked)
            sk_ids = tuple(v for v in holds if v not in self._masked)
            if len(b_ids) < t:
                _LOG.info("not asking client %d: %d survivors in its neighbourhood", u, len(b_ids))
                continue
            requests[u] = (b_ids, sk_ids)
            for v in sk_ids:
                holders[v] += 1
        fallback = {v for v, count in holders.items() if count < t or v in self._excluded}
        bodies = {}
        for u, (b_ids, sk_ids) in requests.items():
            pk_ids = tuple(v for v in sk_ids if v in fallback) if fallback else ()
            self._requested[u] = (b_ids, sk_ids, pk_ids)
            bodies[u] = self._unmasking_body(u, b_ids, sk_ids, pk_ids)
        problem = self._quorum(set(bodies), "can be asked to unmask")
        if problem:
            return self._abort(problem)
        return self._send(stages.UNMASKING, bodies)

    def _unmasking_body(self, u: int, b_ids: tuple[int, ...], sk_ids: tuple[int, ...], pk_ids: tuple[int, ...]) -> bytes:
        """Hook: the Unmasking request to u: ids, the signatures under ConsistencyCheck, and
        the peers whose pairwise keys with u are asked for."""
        body = wire.TWO_COUNTS.pack(len(b_ids), len(sk_ids)) + b"".join(wire.ID.pack(v) for v in b_ids + sk_ids)
        if self.params.consistency_check:
            signers = [v for v in self._rosters[u] if v in self._signatures]
            body += wire.pack_list(wire.SIGNED_ID, [(v, self._signatures[v]) for v in signers])
        return body + wire.pack_list(wire.ID, [(v,) for v in pk_ids])

    def _parse_revealed(self, sender: int, reader: Reader) -> tuple[list[tuple[int, int]], np.ndarray, dict[int, bytes]]:
        """(kind, owner) per revealed share, the shares as one (count, LIMBS) array, and the
        revealed pairwise keys (peer -> key)."""
        b_ids, sk_ids, pk_ids = self._requested[sender]
        entries = reader.take_list(wire.REVEALED_SHARE, len(b_ids) + len(sk_ids))
        expected = [(v, wire.KIND_B) for v in b_ids] + [(v, wire.KIND_SK) for v in sk_ids]
        if [(v, kind) for v, kind, _ in entries] != expected:
            raise reader.fail("revealed shares differ from the ones requested")
        keys = reader.take_list(wire.PAIRWISE_KEY, len(pk_ids))
        if tuple(v for v, _ in keys) != pk_ids:
            raise reader.fail("revealed pairwise keys differ from the ones requested")
        try:
            parsed = shares_from_bytes(b"".join(share for _, _, share in entries))
        except ValueError as exc:
            raise reader.fail(str(exc)) from None
        return [(kind, v) for v, kind in expected], parsed, dict(keys)

    def _after_unmasking(self, revealed: dict[int, tuple[list[tuple[int, int]], np.ndarray, dict]]) -> dict[int, bytes]:
        rows: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)  # (kind, owner) -> holder -> row
        for holder, (items, _shares, _keys) in revealed.items():
            for row, item in enumerate(items):
                rows[item][holder] = row
        dropped = sorted({v for u in self._masked for v in self._holds[u] if v not in self._masked})
        needed = [(wire.KIND_B, u) for u in sorted(self._masked)] + [(wire.KIND_SK, v) for v in dropped]
        pairwise = {(h, v): key for h, (_, _, keys) in revealed.items() for v, key in keys.items()}
        try:
            secrets = self._reconstruct(needed, rows, {h: shares for h, (_, shares, _) in revealed.items()}, pairwise)
        except ValueError as exc:
            return self._abort(str(exc))
        self.result = add_masks_(self._sum, self._unmasking_streams(secrets, dropped, pairwise))
        self.survivors = tuple(sorted(self._masked))
        self.done = True
        self.stage = stages.DONE
        self._expected = set()
        _LOG.info(
            "round %d: sum of %d inputs, %d dropped or excluded after sharing",
            self.params.round_idx,
            len(self.survivors),
            len(dropped),
        )
        return {}

    def _reconstruct(
        self,
        needed: list[tuple[int, int]],
        rows: dict[tuple[int, int], dict[int, int]],
        shares: dict[int, np.ndarray],
        pairwise: dict[tuple[int, int], bytes],
    ) -> dict[tuple[int, int], object]:
        """Each needed secret, checked (b_u: seed bytes; s_v^SK: the private key); an s_v^SK
        is left out when it cannot be rebuilt but every survivor that masked with v
        revealed its pairwise key with v (:meth:`_unmasking_streams` uses those).

        Fast path: the first t shares by holder id; secrets with the same holders share
        one (cached) set of Lagrange coefficients and one vectorised sum.  A secret whose
        candidate fails its check goes to :meth:`_recover`.  ValueError names whose
        secret cannot be reconstructed."""
        t = self.params.threshold
        groups: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        secrets, failed = {}, []
        for item in needed:
            holders = sorted(rows.get(item, {}))
            if len(holders) < t:
                if self._keys_cover(item, pairwise):
                    continue
                raise ValueError(
                    f"cannot reconstruct {_kind(item)} of client {item[1]}: {len(holders)} shares, "
                    f"threshold {t}{self._missing_keys(item, pairwise)}{self._why_excluded(item[1])}"
                )
            groups[tuple(holders[:t])].append(item)
        for holders, items in groups.items():
            coefficients = self.lagrange.coefficients(evaluation_points(self.params.client_ids, holders))
            stacked = np.stack([shares[h][[rows[item][h] for item in items]] for h in holders])
            for item, limbs in zip(items, reconstruct(stacked, coefficients)):
                secret = self._checked_secret(item, limbs)
                if secret is None:
                    failed.append(item)
                else:
                    secrets[item] = secret
        for item in failed:
            try:
                secrets[item] = self._recover(item, rows[item], shares)
            except ValueError:
                if not self._keys_cover(item, pairwise):
                    raise
        return secrets

    def _masked_with(self, v: int) -> list[int]:
        """The survivors that masked with v (the pair was relayed and they opened v's shares)."""
        return [w for w in self._relayed.get(v, ()) if w in self._masked and v not in self._accused_by.get(w, ())]

    def _keys_cover(self, item: tuple[int, int], pairwise: dict[tuple[int, int], bytes]) -> bool:
        """Whether every survivor that masked with the owner of an s^SK revealed its pairwise key."""
        return item[0] == wire.KIND_SK and all((w, item[1]) in pairwise for w in self._masked_with(item[1]))

    def _missing_keys(self, item: tuple[int, int], pairwise: dict[tuple[int, int], bytes]) -> str:
        if item[0] != wire.KIND_SK:
            return ""
        missing = [w for w in self._masked_with(item[1]) if (w, item[1]) not in pairwise]
        return f", and survivors {missing[:8]} did not reveal their pairwise keys with it"

    def _checked_secret(self, item: tuple[int, int], limbs: np.ndarray) -> object | None:
        """The secret the limbs encode if it passes its check (b_u: the commitment; s_v^SK:
        the advertised s_v^PK), else None."""
        try:
            secret = join_limbs(limbs)
        except ValueError:
            return None
        kind, owner = item
        if kind == wire.KIND_B:
            commitment = seed_commitment(secret, owner=owner, **self._ctx())
            return secret if commitment == self._commitments[owner] else None
        private = X25519PrivateKey.from_private_bytes(secret)
        return private if public_key_bytes(private) == self._adverts[owner][1] else None

    def _recover(self, item: tuple[int, int], holder_rows: dict[int, int], shares: dict[int, np.ndarray]) -> object:
        """Robust reconstruction of one secret from all its shares (suspects last); names the
        holders whose shares lie off the accepted polynomial (module docstring)."""
        kind, owner = item
        holders = sorted(holder_rows, key=lambda h: (h in self._suspects, h))
        xs = evaluation_points(self.params.client_ids, holders)
        stacked = np.stack([shares[h][holder_rows[h]] for h in holders])
        found = robust_reconstruct(xs, stacked, self.params.threshold, lambda limbs: self._checked_secret(item, limbs))
        if found is None:
            check = "commitment" if kind == wire.KIND_B else "advertised s^PK"
            raise ValueError(
                f"cannot reconstruct {_kind(item)} of client {owner}: no {self.params.threshold} of its "
                f"{len(holders)} revealed shares give a value matching its {check}{self._why_excluded(owner)}"
            )
        agreeing = int(found.on_polynomial.sum())
        _LOG.warning("%s of client %d recovered by %s from %d agreeing shares", _kind(item), owner, found.method, agreeing)
        for holder, on in zip(holders, found.on_polynomial):
            if on:
                continue
            self._suspects.add(holder)
            reason = (
                f"share of client {owner}'s {_kind(item)} revealed by {holder} is off the polynomial the "
                f"other {agreeing} shares agree on: {holder} altered it or {owner} dealt it"
            )
            self._reject(holder, stages.UNMASKING, reason, REJECTED)
        return found.secret

    def _why_excluded(self, owner: int) -> str:
        why = self._excluded.get(owner)
        return "" if why is None else f" (client {owner} was excluded, {why})"

    def _unmasking_streams(
        self, secrets: dict[tuple[int, int], object], dropped: list[int], pairwise: dict[tuple[int, int], bytes]
    ) -> list[tuple[int, bytes]]:
        """(sign, key) of every mask left in the sum: -PRG(b_u) for each survivor u, and
        for each dropped or excluded v the pairwise masks delta_wv PRG(s_vw) that the
        survivors w holding its shares added (removed with sign delta_vw = -delta_wv),
        from the rebuilt s_v^SK or else from the keys the survivors revealed.  (A revealed
        key cannot be checked: a wrong one corrupts the sum as a wrong masked input would.)"""
        ctx = self._ctx()
        streams = [(-1, self_mask_key(secrets[wire.KIND_B, u], owner=u, **ctx)) for u in sorted(self._masked)]
        for v in dropped:
            private = secrets.get((wire.KIND_SK, v))
            for w in self._masked_with(v):
                if private is None:
                    key = pairwise[w, v]
                else:
                    lo, hi = min(v, w), max(v, w)
                    key = pairwise_mask_key(private, self._adverts[w][1], id_lo=lo, id_hi=hi, **ctx)
                streams.append((pairwise_mask_sign(v, w), key))
        return streams


def _kind(item: tuple[int, int]) -> str:
    return "b" if item[0] == wire.KIND_B else "s^SK"
