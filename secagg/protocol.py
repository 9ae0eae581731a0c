"""Secure aggregation with dropouts: Bonawitz et al., CCS 2017 (double masking) with the
optional sparse graph of Bell et al., CCS 2020 (SecAgg+).  Transport-agnostic.

Every stage is one round trip "server -> one message per client, client -> one reply",
all ``bytes`` with fixed binary layouts (:mod:`secagg.messages`).  Clients never talk
to each other: the encrypted Shamir shares they exchange ride inside these messages.

    server = ServerRound(params)
    messages = server.start()                       # AdvertiseKeys
    while messages:
        replies = {u: clients[u].handle(m) for u, m in messages.items()}  # minus dropouts
        messages = server.step(replies)
    server.result, server.survivors                 # or server.aborted, abort_reason

Stages (Fig. 4 of the paper): AdvertiseKeys (two fresh X25519 keys per client),
ShareKeys (t-of-n Shamir shares of b_u and s_u^SK, AES-GCM encrypted to each
neighbour), MaskedInputCollection (y_u = x_u + PRG(b_u) + sum_v delta_uv PRG(s_uv)),
ConsistencyCheck (optional, Ed25519 signatures on the survivor set), Unmasking (b
shares of survivors, s^SK shares of dropped clients, never both for one client).

PRG: AES-256-CTR under HKDF-SHA256-derived 256-bit keys.  Flower's SecAgg+ folds its
seeds to 32 bits and expands them with MT19937; no seed here is narrower than 256
bits and no numpy/torch/random generator touches anything secret.

Threat models: ``params.active`` False (semi-honest server, possibly malicious
clients: bad shares are judged with proof, :mod:`secagg.server`) or True (the server
may deviate too: clients need the PKI, ``ClientRound(..., signing_key=,
verify_keys=)``, and ``ServerRound(..., verify_keys=)``; the ConsistencyCheck runs).

Writing an attacker.  :func:`drive` carries messages between any objects with the
methods of the two classes, so a malicious party is a subclass that overrides one
method (the rest of the protocol stays real), or a loop that rewrites messages
between :meth:`ServerRound.step` and :meth:`ClientRound.handle`.  Stable hooks:

- client (:class:`ClientRound`): ``_seal(peer, send_key, b_share, sk_share) -> bytes``
  (the ciphertext for one peer), ``_key_checks(peer, send_key, receive_key)``,
  ``_open(peer, ciphertext) -> (b_share, sk_share)`` (raise ValueError to report the
  peer), ``_accusations(failed) -> records``, ``_reveal(b_ids, sk_ids) -> [(peer, kind,
  share)]``, or a whole stage: ``_advertise_keys``, ``_share_keys``,
  ``_masked_input_collection``, ``_consistency_check``, ``_unmasking`` (each takes a
  :class:`~secagg.messages.Reader` over the request body and returns the reply body);
- server (:class:`ServerRound`): ``_after_advertise_keys``, ``_after_share_keys``,
  ``_after_masked_input_collection``, ``_after_consistency_check``, ``_after_unmasking``
  (parsed replies in, ``{client: request}`` out via ``_send(stage, bodies)``),
  ``_request_unmasking(recipients)`` and ``_unmasking_body(u, b_ids, sk_ids, pk_ids)``.

Wire layouts are in :mod:`secagg.messages`; ``messages.pack_message`` builds a request
with a valid header for any stage and party.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from secagg.client import ClientRound
from secagg.graph import graph_for
from secagg.messages import ProtocolError, Rejection
from secagg.params import ProtocolParams
from secagg.server import ServerRound
from secagg.stages import (
    STAGES,
)

__all__ = [
    "ClientRound",
    "ProtocolError",
    "ProtocolParams",
    "Rejection",
    "ServerRound",
    "drive",
    "run_in_memory",
]

_LOG = logging.getLogger(__name__)


def run_in_memory(
    params: ProtocolParams,
    inputs: Mapping[int, np.ndarray],
    dropouts: Mapping[str, set[int]] | None = None,
) -> ServerRound:
    """Run one round with every client in this process; return the finished server.

    ``inputs``: each cohort client's encoded input (see :meth:`ClientRound.set_input`).
    ``dropouts``: stage name -> clients that stop answering from that stage on (they
    never send that stage's reply).  A client that refuses a message is dropped too.
    """
    missing = set(params.client_ids) - set(inputs)
    if missing:
        raise ValueError(f"inputs must hold every cohort client, missing {sorted(missing)[:8]}")
    graph = graph_for(params)
    clients = {u: ClientRound(params, u, graph=graph) for u in params.client_ids}
    for u, client in clients.items():
        client.set_input(inputs[u])
    return drive(ServerRound(params, graph=graph), clients, dropouts)


def drive(
    server: ServerRound,
    clients: Mapping[int, ClientRound],
    dropouts: Mapping[str, set[int]] | None = None,
) -> ServerRound:
    """Carry messages between ``server`` (not started) and ``clients`` until the round ends.

    ``dropouts`` as in :func:`run_in_memory`; ``clients`` may be any objects with the
    ``handle`` method of :class:`ClientRound` (e.g. timing wrappers).
    """
    dropouts = dict(dropouts or {})
    unknown = set(dropouts) - set(STAGES)
    if unknown:
        raise ValueError(f"dropouts keys must be stage names {STAGES}, got {sorted(unknown)}")
    gone: set[int] = set()
    messages = server.start()
    while messages:
        gone |= set(dropouts.get(server.stage, ()))
        replies = {}
        for u, message in messages.items():
            if u in gone:
                continue
            try:
                replies[u] = clients[u].handle(message)
            except ProtocolError as error:
                _LOG.info("client %d drops out: %s", u, error)
                gone.add(u)
        messages = server.step(replies)
    return server
