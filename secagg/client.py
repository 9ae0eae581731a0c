"""The client's side of one round: a state machine fed one server message at a time.

Bonawitz et al., CCS 2017, Fig. 4 (Rounds 0-4), with the sparse graph of Bell et al.,
CCS 2020: every stage is "server message in, one reply out" (:meth:`ClientRound.handle`).
A client refuses (raises :class:`~secagg.messages.ProtocolError`, after which it is
dead for the round) whenever the server's message is malformed, replayed or
inconsistent, or asks for what would let the server unmask someone:

- fewer than t parties of its neighbourhood in the announced key roster, holders of
  its peers' shares, or survivors (the server could otherwise reconstruct from too
  few inputs);
- the b-share and the s^SK-share of the same peer (both together remove every mask
  of that peer's input); Unmasking is answered once per round, so this holds for
  the whole round;
- the s^SK-share of a peer that the ConsistencyCheck announced as a survivor, or a
  survivor set that differs from the signed one, names ids outside the cohort, or
  names a peer whose shares this client reported as unopenable.

A peer's bad shares do not make a client refuse (robustness to malicious clients): a
ciphertext that fails to open, or whose shares are not field elements, is reported in
the MaskedInputCollection reply (an accusation); the client keeps no share of that
sender and does not mask with it (the server reads who masked with whom from the
accusations, and excludes one of the two: :mod:`secagg.server`).  Semi-honest mode
reveals, per accusation, the receive key of that one channel (single-use, so it opens
only the accused ciphertext, which is addressed to the accuser); active mode
(``params.active``) reveals nothing, since the server may have forged the ciphertext to
harvest the key.  Active mode also needs the PKI (``verify_keys``) and the client's
own identity key (``signing_key``): every roster entry's signature is checked against
the PKI, so a server that substitutes a peer's keys is refused by name.

Secrets: per round two fresh X25519 key pairs (c: share encryption, s: masks) and
the 256-bit self-mask seed b_u, all from the OS CSPRNG.  The secret keys and b_u are
dropped as soon as the masked input is sent: afterwards the client holds only shares
and its pairwise mask keys s_uv (dropped after Unmasking).  It reveals s_uv only for a
peer v it is not asked the b-share of (and, under the ConsistencyCheck, that is not in
the signed survivor set): the same rule as for the s^SK-share, of which s_uv is a
consequence.  The server asks for them only where v's s^SK cannot be rebuilt (an
excluded client, or fewer than t holders), so that one bad client cannot abort a round
by dealing valid shares to fewer than t peers.

Hooks for attack code (a subclass overriding one method is a malicious client; see
:mod:`secagg.protocol`): :meth:`ClientRound._seal` (the ciphertext for one peer),
:meth:`ClientRound._key_checks`, :meth:`ClientRound._open` (open one peer's
ciphertext), :meth:`ClientRound._accusations` (what the reply reports) and
:meth:`ClientRound._reveal` (the shares sent in Unmasking).
"""

from __future__ import annotations

import bisect
import logging
import os

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secagg import consistency
from secagg.agreement import (
    generate_private_key,
    pairwise_mask_key,
    public_key_bytes,
    seed_commitment,
    self_mask_key,
    share_encryption_keys,
)
from secagg.channel import key_check, open_shares, seal_shares
from secagg.encoding import ring_dtype
from secagg.graph import NeighbourGraph, graph_for
from secagg import messages as wire
from secagg import stages
from secagg.masking import add_masks_, pairwise_mask_sign
from secagg.messages import ProtocolError, Reader
from secagg.params import ProtocolParams
from secagg.shamir import evaluation_points, share_secrets, share_to_bytes

__all__ = ["ClientRound"]

_LOG = logging.getLogger(__name__)


class ClientRound:
    """One (virtual) client in one round.

    ``signing_key`` / ``verify_keys``: for the ConsistencyCheck, this client's Ed25519
    key and the verify keys of the cohort from a PKI; without them a fresh key is made
    and peers' keys are taken from the round's roster (which only protects against a
    server that does not substitute keys).  Required when ``params.active`` (ValueError
    otherwise, or when ``signing_key`` is not the PKI's key of ``client_id``).
    ``graph``: the round's :class:`NeighbourGraph`, to share one instance among many
    virtual clients.
    """

    def __init__(
        self,
        params: ProtocolParams,
        client_id: int,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        verify_keys: dict[int, bytes] | None = None,
        graph: NeighbourGraph | None = None,
    ) -> None:
        if not isinstance(params, ProtocolParams):  # validated when constructed (frozen)
            raise ValueError(f"params must be a ProtocolParams, got {type(params).__name__}")
        if client_id not in params.client_ids:
            raise ValueError(f"client_id must be in the cohort params.client_ids, got {client_id}")
        if signing_key is not None and not isinstance(signing_key, Ed25519PrivateKey):
            raise ValueError(f"signing_key must be an Ed25519PrivateKey, got {type(signing_key).__name__}")
        if params.active:
            _check_identity(client_id, signing_key, verify_keys)
        self.params = params
        self.client_id = client_id
        self.stage = stages.ADVERTISE_KEYS
        self._wire = wire.Endpoint(params.session, params.round_idx, client_id)
        self._context = {"session": params.session, "round_idx": params.round_idx}  # key derivation context
        self._graph = graph_for(params, graph)
        self._holders = frozenset(self._graph.closed_neighbourhood(client_id))
        self._signing_key = signing_key
        self._verify_keys = dict(verify_keys) if verify_keys is not None else None
        self._input: np.ndarray | None = None
        self._c_key = self._s_key = None
        self._roster: dict[int, tuple[bytes, bytes, bytes | None]] = {}
        self._b_seed: bytes | None = None
        self._shares: dict[int, tuple[bytes, bytes]] = {}  # peer -> (b share, s^SK share)
        self._receive_keys: dict[int, bytes] = {}  # peer -> AES-GCM key of its shares to us
        self._accused: frozenset[int] = frozenset()  # peers whose shares it could not open
        self._pairwise: dict[int, bytes] = {}  # peer -> s_uv, kept from MaskedInputCollection to Unmasking
        self._signed_survivors: tuple[int, ...] | None = None

    # --- public API ----------------------------------------------------------------------

    def set_input(self, encoded: np.ndarray) -> None:
        """The encoded input x_u: ``params.dim`` ring elements (uint32 for a 32-bit ring,
        uint64 for 64; signed arrays of the same width are viewed as unsigned).  Copied."""
        dtype = ring_dtype(self.params.modulus_bits)
        if (
            not isinstance(encoded, np.ndarray)
            or encoded.dtype.itemsize != dtype.itemsize
            or encoded.dtype.kind not in "iu"
        ):
            got = encoded.dtype if isinstance(encoded, np.ndarray) else type(encoded).__name__
            raise ValueError(f"encoded must be a numpy array of {dtype}, got {got}")
        if encoded.shape != (self.params.dim,):
            raise ValueError(f"encoded must have shape ({self.params.dim},), got {encoded.shape}")
        if self.stage not in (stages.ADVERTISE_KEYS, stages.SHARE_KEYS, stages.MASKED_INPUT_COLLECTION):
            raise ValueError(f"set_input must come before MaskedInputCollection, client is at {self.stage}")
        self._input = np.array(encoded.view(dtype), dtype=dtype, order="C")

    def handle(self, message: bytes) -> bytes:
        """Process the server's message for the current stage; return the reply.

        The stage methods return the reply body: bytes, or a list of bytes-like parts.

        Raises ProtocolError (sender = the server, or the peer whose share failed) to
        refuse; the client is then :data:`stages.ABORTED` for the rest of the round.
        """
        handlers = {
            stages.ADVERTISE_KEYS: self._advertise_keys,
            stages.SHARE_KEYS: self._share_keys,
            stages.MASKED_INPUT_COLLECTION: self._masked_input_collection,
            stages.CONSISTENCY_CHECK: self._consistency_check,
            stages.UNMASKING: self._unmasking,
        }
        stage = self.stage
        try:
            if stage not in handlers:
                raise ProtocolError(
                    wire.SERVER_ID, stage, f"round is over for this client ({stage})", self.client_id
                )
            reader = self._wire.open(message, stage, wire.REQUEST, wire.SERVER_ID)
            reply_body = handlers[stage](reader)
        except ProtocolError as error:
            _LOG.warning("client %d refuses: %s", self.client_id, error)
            self._forget_secrets()
            self._pairwise = {}
            self.stage = stages.ABORTED
            raise
        return self._wire.pack(stage, wire.REPLY, wire.SERVER_ID, reply_body)

    # --- helpers ---------------------------------------------------------------------------

    def _refuse(self, reader: Reader, reason: str) -> ProtocolError:
        return reader.fail(f"client {self.client_id} refuses: {reason}")

    def _forget_secrets(self) -> None:
        """Drop the round's key material (the pairwise keys survive MaskedInputCollection,
        until Unmasking; a refusal drops them too, see :meth:`handle`)."""
        self._c_key = self._s_key = None
        self._b_seed = None
        self._input = None
        self._receive_keys = {}

    def _neighbourhood_quorum(self, reader: Reader, what: str, members: set[int] | frozenset[int]) -> None:
        """Refuse when fewer than t members of N[u] are in ``members``."""
        count = len(members & self._holders)
        if count < self.params.threshold:
            raise self._refuse(
                reader, f"only {count} {what} in its neighbourhood, below threshold {self.params.threshold}"
            )

    # --- Round 0: AdvertiseKeys -------------------------------------------------------------

    def _advertise_keys(self, reader: Reader) -> bytes:
        """Check the parameters' digest; make c and s key pairs; send (c^PK, s^PK[, vk, sig])."""
        (digest,) = reader.take(wire.DIGEST)
        reader.end()
        if digest != self.params.digest():
            raise self._refuse(reader, "the server's round parameters differ from this client's")
        self._c_key, self._s_key = generate_private_key(), generate_private_key()
        c_pk, s_pk = public_key_bytes(self._c_key), public_key_bytes(self._s_key)
        self.stage = stages.SHARE_KEYS
        if not self.params.consistency_check:
            return wire.ADVERT.pack(c_pk, s_pk)
        if self._signing_key is None:
            self._signing_key = Ed25519PrivateKey.generate()
        payload = consistency.advert_payload(
            session=self.params.session,
            round_idx=self.params.round_idx,
            client_id=self.client_id,
            c_pk=c_pk,
            s_pk=s_pk,
        )
        return wire.ADVERT_SIGNED.pack(
            c_pk,
            s_pk,
            consistency.verify_key_bytes(self._signing_key),
            consistency.sign(self._signing_key, payload),
        )

    # --- Round 1: ShareKeys -------------------------------------------------------------------

    def _read_roster(self, reader: Reader) -> dict[int, tuple[bytes, bytes, bytes | None]]:
        signed = self.params.consistency_check
        entries = reader.take_list(
            wire.ROSTER_ENTRY_SIGNED if signed else wire.ROSTER_ENTRY, len(self._holders)
        )
        reader.end()
        roster: dict[int, tuple[bytes, bytes, bytes | None]] = {}
        previous = 0
        for entry in entries:
            v, c_pk, s_pk = entry[:3]
            if v <= previous or v not in self._holders:
                raise self._refuse(reader, f"roster entry {v} is unsorted or not in its neighbourhood")
            previous = v
            vk = entry[3] if signed else None
            problem = signed and consistency.advert_problem(
                self.params.session, self.params.round_idx, v, entry[1:], self._verify_keys
            )
            if problem:
                raise self._refuse(reader, problem)
            roster[v] = (c_pk, s_pk, vk)
        own = roster.get(self.client_id)
        if own is None or own[:2] != (public_key_bytes(self._c_key), public_key_bytes(self._s_key)):
            raise self._refuse(reader, "roster does not carry this client's own keys unchanged")
        keys = [k for c_pk, s_pk, _ in roster.values() for k in (c_pk, s_pk)]
        if len(set(keys)) != len(keys):
            raise self._refuse(reader, "roster repeats a public key")
        self._neighbourhood_quorum(reader, "roster members", set(roster))
        return roster

    def _share_keys(self, reader: Reader) -> bytes:
        """Fig. 4 Round 1: b_u from os.urandom; t-of-|roster| shares of b_u and s_u^SK;
        one AES-GCM ciphertext per peer of the roster; a hash commitment to b_u."""
        self._roster = self._read_roster(reader)
        holders = sorted(self._roster)
        self._b_seed = os.urandom(32)
        shares = share_secrets(
            [self._b_seed, self._s_key.private_bytes_raw()],
            evaluation_points(self.params.client_ids, holders),
            self.params.threshold,
        )
        ctx = self._ctx()
        entries, checks = [], []
        for row, v in zip(shares, holders):
            b_share, sk_share = share_to_bytes(row[0]), share_to_bytes(row[1])
            if v == self.client_id:
                self._shares[v] = (b_share, sk_share)
                continue
            send_key, receive_key = share_encryption_keys(
                self._c_key, self._roster[v][0], own_id=self.client_id, peer_id=v, **ctx
            )
            self._receive_keys[v] = receive_key
            entries.append((v, self._seal(v, send_key, b_share, sk_share)))
            checks.append(self._key_checks(v, send_key, receive_key))
        self.stage = stages.MASKED_INPUT_COLLECTION
        commitment = seed_commitment(self._b_seed, owner=self.client_id, **ctx)
        return (
            wire.COMMITMENT.pack(commitment)
            + wire.pack_list(wire.CIPHERTEXT_ENTRY, entries)
            + wire.pack_list(wire.KEY_CHECKS, checks)
        )

    def _ctx(self) -> dict[str, object]:
        return self._context

    def _seal(self, peer: int, send_key: bytes, b_share: bytes, sk_share: bytes) -> bytes:
        """Hook: the AES-GCM ciphertext of this client's shares for ``peer`` (Fig. 4, Round 1)."""
        return seal_shares(
            send_key, sender=self.client_id, receiver=peer, b_share=b_share, sk_share=sk_share, **self._ctx()
        )

    def _key_checks(self, peer: int, send_key: bytes, receive_key: bytes) -> tuple[bytes, bytes]:
        """Hook: the checks (:func:`secagg.channel.key_check`) of the pair's two keys in id
        order (lo -> hi, hi -> lo); the server relays the pair's ciphertexts only when
        ``peer`` sends the same record."""
        if self.client_id < peer:
            return key_check(send_key), key_check(receive_key)
        return key_check(receive_key), key_check(send_key)

    # --- Round 2: MaskedInputCollection -------------------------------------------------------

    def _masked_input_collection(self, reader: Reader) -> bytes:
        """Fig. 4 Round 2: open peers' shares; y_u = x_u + PRG(b_u) + sum_v delta_uv PRG(s_uv)
        over the peers v whose shares it holds; report the others (accusations)."""
        entries = reader.take_list(wire.CIPHERTEXT_ENTRY, len(self._roster))
        reader.end()
        if self._input is None:
            raise self._refuse(reader, "no input set (call set_input before MaskedInputCollection)")
        previous, failed = 0, []
        for v, ciphertext in entries:
            if v <= previous or v not in self._roster or v == self.client_id:
                raise self._refuse(reader, f"share sender {v} is unsorted, repeated or not in its roster")
            previous = v
            try:
                self._shares[v] = self._open(v, ciphertext)
            except ValueError as exc:
                _LOG.warning("client %d cannot open the shares of client %d (%s): reports it", self.client_id, v, exc)
                failed.append(v)
        self._accused = frozenset(failed)
        self._neighbourhood_quorum(reader, "holders of valid shares (itself and peers)", set(self._shares))
        ctx = self._ctx()
        streams = [(1, self_mask_key(self._b_seed, owner=self.client_id, **ctx))]
        for v in sorted(self._shares):
            if v != self.client_id:
                lo, hi = min(v, self.client_id), max(v, self.client_id)
                key = pairwise_mask_key(self._s_key, self._roster[v][1], id_lo=lo, id_hi=hi, **ctx)
                self._pairwise[v] = key
                streams.append((pairwise_mask_sign(self.client_id, v), key))
        masked = add_masks_(self._input, streams).astype(self._input.dtype.newbyteorder("<"), copy=False)
        tail = wire.pack_list(wire.accusation_layout(self.params.active), self._accusations(failed))
        self._forget_secrets()
        self.stage = stages.CONSISTENCY_CHECK if self.params.consistency_check else stages.UNMASKING
        return [masked, tail]  # joined with the header in one copy (Endpoint.pack)

    def _open(self, peer: int, ciphertext: bytes) -> tuple[bytes, bytes]:
        """Hook: (b share, s^SK share) from ``peer``'s ciphertext; ValueError if it does not
        open or its shares are not field elements."""
        return open_shares(
            self._receive_keys[peer], ciphertext, sender=peer, receiver=self.client_id, **self._ctx()
        )

    def _accusations(self, failed: list[int]) -> list[tuple]:
        """Hook: the accusation records of the reply for the senders in ``failed``:
        (sender, receive key) in semi-honest mode, (sender,) in active mode."""
        if self.params.active:
            return [(v,) for v in failed]
        return [(v, self._receive_keys[v]) for v in failed]

    # --- Round 3: ConsistencyCheck ------------------------------------------------------------

    def _consistency_check(self, reader: Reader) -> bytes:
        """Fig. 4 Round 3: check the announced survivor set U3 and sign it."""
        survivors = self._read_ids(reader, len(self.params.client_ids), "survivor")
        reader.end()
        outsiders = [v for v in survivors if not self._in_cohort(v)]
        if outsiders:
            raise self._refuse(reader, f"survivor ids {outsiders[:5]} are not in the cohort")
        if self.client_id not in survivors:
            raise self._refuse(reader, "survivor set omits this client, which sent its masked input")
        accused = sorted(self._accused.intersection(survivors))
        if accused:
            raise self._refuse(
                reader, f"survivors {accused[:5]} sent it shares it reported as unopenable (they must be excluded)"
            )
        strangers = (set(survivors) & self._holders) - set(self._roster)
        if strangers:
            raise self._refuse(reader, f"survivors {sorted(strangers)[:5]} were never in its roster")
        self._neighbourhood_quorum(reader, "survivors", set(survivors))
        self._signed_survivors = survivors
        self.stage = stages.UNMASKING
        payload = consistency.survivors_payload(
            session=self.params.session, round_idx=self.params.round_idx, survivors=survivors
        )
        return wire.SIGNATURE.pack(consistency.sign(self._signing_key, payload))

    def _in_cohort(self, v: int) -> bool:
        ids = self.params.client_ids
        i = bisect.bisect_left(ids, v)
        return i < len(ids) and ids[i] == v

    def _read_ids(self, reader: Reader, max_count: int, what: str) -> tuple[int, ...]:
        ids = tuple(v for (v,) in reader.take_list(wire.ID, max_count))
        if any(b <= a for a, b in zip(ids, ids[1:])):
            raise self._refuse(reader, f"{what} ids are not sorted and distinct")
        return ids

    # --- Round 4: Unmasking ------------------------------------------------------------------

    def _check_signatures(self, reader: Reader) -> None:
        """Fig. 4 Round 4: peers' signatures on the same U3; at least t valid in N[u]."""
        signed = reader.take_list(wire.SIGNED_ID, len(self.params.client_ids))
        payload = consistency.survivors_payload(
            session=self.params.session, round_idx=self.params.round_idx, survivors=self._signed_survivors
        )
        signers = set()
        for v, sig in signed:
            if v not in self._roster or v in signers:
                raise self._refuse(reader, f"signature from {v}, not a distinct member of its roster")
            if not consistency.verify(self._roster[v][2], sig, payload):
                raise self._refuse(
                    reader, f"client {v}'s signature on the survivor set is invalid (inconsistent views)"
                )
            signers.add(v)
        self._neighbourhood_quorum(reader, "signers of the survivor set", signers)

    def _unmasking(self, reader: Reader) -> bytes:
        """Fig. 4 Round 4: reveal b-shares of survivors and s^SK-shares of dropped peers,
        never both for one peer, only with t survivors in the neighbourhood; and, for
        dropped or excluded peers only, the pairwise mask keys the server asks for (a
        fallback when their s^SK cannot be rebuilt from t valid shares)."""
        b_count, sk_count = reader.take(wire.TWO_COUNTS)
        limit = len(self._shares)
        if b_count + sk_count > limit:
            raise self._refuse(reader, f"asked for {b_count + sk_count} shares, it holds {limit}")
        b_ids = tuple(v for (v,) in (reader.take(wire.ID) for _ in range(b_count)))
        sk_ids = tuple(v for (v,) in (reader.take(wire.ID) for _ in range(sk_count)))
        if self.params.consistency_check:
            self._check_signatures(reader)
        pk_ids = self._read_ids(reader, len(self._pairwise), "pairwise-key")
        reader.end()
        for what, ids in (("survivor", b_ids), ("dropped", sk_ids)):
            if any(b <= a for a, b in zip(ids, ids[1:])):
                raise self._refuse(reader, f"{what} ids are not sorted and distinct")
            unknown = [v for v in ids if v not in self._shares]
            if unknown:
                raise self._refuse(reader, f"asked for shares of {unknown[:5]}, which never shared with it")
        strangers = [v for v in pk_ids if v not in self._pairwise]
        if strangers:
            raise self._refuse(reader, f"asked for pairwise keys with {strangers[:5]}, which it did not mask with")
        both = sorted(set(b_ids) & (set(sk_ids) | set(pk_ids)))
        if both:  # one Unmasking per round (the stage machine), so this covers the round
            other = "s^SK-share" if both[0] in sk_ids else "pairwise key"
            raise self._refuse(reader, f"asked for both the b-share and the {other} of client {both[0]}")
        undeclared = [v for v in pk_ids if v not in sk_ids]
        if undeclared:
            raise self._refuse(reader, f"asked for pairwise keys with {undeclared[:5]}, not announced as dropped")
        if self.client_id in sk_ids:
            raise self._refuse(reader, "asked for its own s^SK-share")
        if self.params.consistency_check:
            announced = set(self._signed_survivors)
            if set(b_ids) != announced & set(self._shares) or set(sk_ids) != set(self._shares) - announced:
                raise self._refuse(reader, "request differs from the signed survivor set")
            if announced.intersection(pk_ids):
                raise self._refuse(reader, "asked for pairwise keys with clients of the signed survivor set")
        self._neighbourhood_quorum(reader, "survivors", set(b_ids))
        self.stage = stages.DONE
        reply = wire.pack_list(wire.REVEALED_SHARE, self._reveal(b_ids, sk_ids))
        reply += wire.pack_list(wire.PAIRWISE_KEY, [(v, self._pairwise[v]) for v in pk_ids])
        self._pairwise = {}
        return reply

    def _reveal(self, b_ids: tuple[int, ...], sk_ids: tuple[int, ...]) -> list[tuple[int, int, bytes]]:
        """Hook: the (peer, kind, share) records of the Unmasking reply, after every check."""
        entries = [(v, wire.KIND_B, self._shares[v][0]) for v in b_ids]
        return entries + [(v, wire.KIND_SK, self._shares[v][1]) for v in sk_ids]


def _check_identity(
    client_id: int, signing_key: Ed25519PrivateKey | None, verify_keys: dict[int, bytes] | None
) -> None:
    """Active mode: the PKI and this client's identity key must be given and agree."""
    if verify_keys is None or signing_key is None:
        missing = [name for name, value in (("verify_keys", verify_keys), ("signing_key", signing_key)) if value is None]
        raise ValueError(
            f"params.active requires verify_keys (the PKI: each cohort client's Ed25519 verify key) and "
            f"signing_key (this client's identity key); missing {', '.join(missing)}"
        )
    if verify_keys.get(client_id) != consistency.verify_key_bytes(signing_key):
        raise ValueError(f"signing_key is not the identity of client {client_id}: verify_keys[{client_id}] differs")
