"""The server's side of one round: relays, checks, prunes, reconstructs, unmasks.

Bonawitz et al., CCS 2017, Fig. 4 (server side of Rounds 0-4), with the sparse graph of
Bell et al., CCS 2020.  :meth:`ServerRound.step` takes the replies of the clients that
answered a stage; a client that did not answer, or whose reply is rejected, has dropped
for the rest of the round.  Client input never raises: every rejection is logged and
recorded in ``rejections`` as (sender, stage, reason).  The server aborts (``aborted``,
``abort_reason``) whenever fewer than t clients remain at a stage or a needed secret
cannot be reconstructed from t shares; it never releases a sum of fewer than t inputs.

Sets, in the paper's names: U1 advertised keys, U2 sent shares, U3 sent masked inputs
(the survivors whose inputs are summed), U4 signed U3 (ConsistencyCheck), U5 answered
Unmasking.  For each survivor u the server reconstructs b_u (checked against u's
commitment) and removes PRG(b_u); for each dropped v in U2 - U3 with a surviving
neighbour it reconstructs s_v^SK (checked against the advertised s_v^PK) and removes
v's pairwise masks from the sum.  A reconstruction that fails its check aborts the
round rather than release a corrupted sum.
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
from secagg.encoding import ring_dtype
from secagg.graph import NeighbourGraph, graph_for
from secagg import messages as wire
from secagg import stages
from secagg.masking import add_masks_, pairwise_mask_sign
from secagg.messages import ProtocolError, Reader
from secagg.params import ProtocolParams
from secagg.shamir import LagrangeCache, evaluation_points, join_limbs, reconstruct, shares_from_bytes

__all__ = ["ServerRound"]

_LOG = logging.getLogger(__name__)


class ServerRound:
    """The server in one round: ``start()``, then ``step(replies)`` per stage until ``done``.

    ``verify_keys``: the cohort's Ed25519 verify keys from a PKI (ConsistencyCheck);
    ``keep_transcript``: record every received message in ``transcript`` (on by default,
    it holds every masked vector); ``graph``: a shared :class:`NeighbourGraph`.
    ``stage_seconds``: wall time of each stage's processing (replies in, requests out).
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
        self.rejections: list[tuple[int, str, str]] = []
        self.lagrange = LagrangeCache()
        self.stage_seconds: dict[str, float] = {}
        self._started = False
        self._expected: set[int] = set()
        self._adverts: dict[int, tuple] = {}  # U1: id -> (c_pk, s_pk[, vk, sig])
        self._rosters: dict[int, tuple[int, ...]] = {}
        self._mailbox: dict[int, dict[int, bytes]] = defaultdict(dict)  # receiver -> sender -> ciphertext
        self._shared: set[int] = set()  # U2
        self._commitments: dict[int, bytes] = {}  # u -> commitment to b_u
        self._peers: dict[int, tuple[int, ...]] = {}  # u -> U2 & N(u): whom u masked with
        self._sum: np.ndarray | None = None
        self._masked: set[int] = set()  # U3
        self._signatures: dict[int, bytes] = {}  # U4
        self._requested: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
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

    def _reject(self, sender: object, stage: str, reason: str) -> None:
        _LOG.warning("server rejects %s message from client %s: %s", stage, sender, reason)
        self.rejections.append((sender, stage, reason))

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

    def _parse_shares(self, sender: int, reader: Reader) -> tuple[bytes, dict[int, bytes]]:
        receivers = [v for v in self._rosters[sender] if v != sender]
        (commitment,) = reader.take(wire.COMMITMENT)
        entries = reader.take_list(wire.CIPHERTEXT_ENTRY, len(receivers))
        if [v for v, _ in entries] != receivers:
            raise reader.fail(f"ciphertexts must go to its roster {receivers[:8]}..., in order")
        return commitment, dict(entries)

    def _after_share_keys(self, shares: dict[int, tuple[bytes, dict[int, bytes]]]) -> dict[int, bytes]:
        for u, (commitment, ciphertexts) in shares.items():
            self._commitments[u] = commitment
            for v, ciphertext in ciphertexts.items():
                self._mailbox[v][u] = ciphertext
        self._shared = set(shares)
        active = self._viable(self._shared, self._shared)
        problem = self._quorum(active, "sent shares with a quorum of neighbours")
        if problem:
            return self._abort(problem)
        bodies = {}
        for u in sorted(active):
            self._peers[u] = tuple(v for v in self._graph.neighbours(u) if v in self._shared)
            bodies[u] = wire.pack_list(
                wire.CIPHERTEXT_ENTRY, [(v, self._mailbox[u][v]) for v in self._peers[u]]
            )
        self._mailbox.clear()
        return self._send(stages.MASKED_INPUT_COLLECTION, bodies)

    # --- Round 2: MaskedInputCollection ---------------------------------------------------

    def _parse_masked_input(self, sender: int, reader: Reader) -> np.ndarray:
        dtype = ring_dtype(self.params.modulus_bits).newbyteorder("<")
        return np.frombuffer(reader.take_bytes(self.params.dim * self.params.word_bytes), dtype=dtype)

    def _after_masked_input_collection(self, masked: dict[int, np.ndarray]) -> dict[int, bytes]:
        self._masked = set(masked)
        problem = self._quorum(self._masked, "sent masked inputs")
        if problem:
            return self._abort(problem)
        total = np.zeros(self.params.dim, dtype=ring_dtype(self.params.modulus_bits))
        for y in masked.values():
            np.add(total, y, out=total)
        self._sum = total
        if self.params.consistency_check:
            body = wire.pack_list(wire.ID, [(u,) for u in sorted(self._masked)])
            return self._send(stages.CONSISTENCY_CHECK, {u: body for u in sorted(self._masked)})
        return self._request_unmasking(self._masked)

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
        among the peers whose shares it holds; skip those with fewer than t survivors."""
        bodies = {}
        for u in sorted(recipients):
            holds = sorted(self._peers[u] + (u,))
            b_ids = tuple(v for v in holds if v in self._masked)
            sk_ids = tuple(v for v in holds if v not in self._masked)
            if len(b_ids) < self.params.threshold:
                _LOG.info("not asking client %d: %d survivors in its neighbourhood", u, len(b_ids))
                continue
            body = wire.TWO_COUNTS.pack(len(b_ids), len(sk_ids)) + b"".join(
                wire.ID.pack(v) for v in b_ids + sk_ids
            )
            if self.params.consistency_check:
                signers = [v for v in self._rosters[u] if v in self._signatures]
                body += wire.pack_list(wire.SIGNED_ID, [(v, self._signatures[v]) for v in signers])
            self._requested[u] = (b_ids, sk_ids)
            bodies[u] = body
        problem = self._quorum(set(bodies), "can be asked to unmask")
        if problem:
            return self._abort(problem)
        return self._send(stages.UNMASKING, bodies)

    def _parse_revealed(self, sender: int, reader: Reader) -> tuple[list[tuple[int, int]], np.ndarray]:
        """(kind, owner) per revealed share, and the shares as one (count, LIMBS) array."""
        b_ids, sk_ids = self._requested[sender]
        entries = reader.take_list(wire.REVEALED_SHARE, len(b_ids) + len(sk_ids))
        expected = [(v, wire.KIND_B) for v in b_ids] + [(v, wire.KIND_SK) for v in sk_ids]
        if [(v, kind) for v, kind, _ in entries] != expected:
            raise reader.fail("revealed shares differ from the ones requested")
        try:
            parsed = shares_from_bytes(b"".join(share for _, _, share in entries))
        except ValueError as exc:
            raise reader.fail(str(exc)) from None
        return [(kind, v) for v, kind in expected], parsed

    def _after_unmasking(
        self, revealed: dict[int, tuple[list[tuple[int, int]], np.ndarray]]
    ) -> dict[int, bytes]:
        rows: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)  # (kind, owner) -> holder -> row
        for holder, (items, _shares) in revealed.items():
            for row, item in enumerate(items):
                rows[item][holder] = row
        dropped = sorted({v for u in self._masked for v in self._peers[u] if v not in self._masked})
        needed = [(wire.KIND_B, u) for u in sorted(self._masked)] + [(wire.KIND_SK, v) for v in dropped]
        try:
            secrets = self._reconstruct(needed, rows, {h: shares for h, (_, shares) in revealed.items()})
            streams = self._unmasking_streams(secrets, dropped)
        except ValueError as exc:
            return self._abort(str(exc))
        self.result = add_masks_(self._sum, streams)
        self.survivors = tuple(sorted(self._masked))
        self.done = True
        self.stage = stages.DONE
        self._expected = set()
        _LOG.info(
            "round %d: sum of %d inputs, %d dropped after sharing",
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
    ) -> dict[tuple[int, int], bytes]:
        """Each needed secret from the first t shares by holder id; secrets with the same
        holders share one (cached) set of Lagrange coefficients and one vectorised sum."""
        t = self.params.threshold
        groups: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        for item in needed:
            holders = sorted(rows.get(item, {}))
            if len(holders) < t:
                kind = "b" if item[0] == wire.KIND_B else "s^SK"
                raise ValueError(
                    f"cannot reconstruct {kind} of client {item[1]}: {len(holders)} shares, threshold {t}"
                )
            groups[tuple(holders[:t])].append(item)
        secrets = {}
        for holders, items in groups.items():
            coefficients = self.lagrange.coefficients(evaluation_points(self.params.client_ids, holders))
            stacked = np.stack([shares[h][[rows[item][h] for item in items]] for h in holders])
            for item, limbs in zip(items, reconstruct(stacked, coefficients)):
                try:
                    secrets[item] = join_limbs(limbs)
                except ValueError as exc:
                    raise ValueError(f"shares of client {item[1]} are inconsistent: {exc}") from None
        return secrets

    def _unmasking_streams(
        self, secrets: dict[tuple[int, int], bytes], dropped: list[int]
    ) -> list[tuple[int, bytes]]:
        """(sign, key) of every mask left in the sum: -PRG(b_u) for each survivor u, and
        for each dropped v the pairwise masks delta_wv PRG(s_vw) its surviving neighbours
        w added (removed with sign delta_vw = -delta_wv).  ValueError if a reconstructed
        secret fails its check (commitment to b_u, advertised s_v^PK)."""
        ctx = {"session": self.params.session, "round_idx": self.params.round_idx}
        streams = []
        for u in sorted(self._masked):
            seed = secrets[wire.KIND_B, u]
            if seed_commitment(seed, owner=u, **ctx) != self._commitments[u]:
                raise ValueError(f"reconstructed b of client {u} does not match its commitment (bad shares)")
            streams.append((-1, self_mask_key(seed, owner=u, **ctx)))
        for v in dropped:
            private = X25519PrivateKey.from_private_bytes(secrets[wire.KIND_SK, v])
            if public_key_bytes(private) != self._adverts[v][1]:
                raise ValueError(f"reconstructed s^SK of client {v} does not match its s^PK (bad shares)")
            for w in self._graph.neighbours(v):
                if w in self._masked:
                    lo, hi = min(v, w), max(v, w)
                    key = pairwise_mask_key(private, self._adverts[w][1], id_lo=lo, id_hi=hi, **ctx)
                    streams.append((pairwise_mask_sign(v, w), key))
        return streams
