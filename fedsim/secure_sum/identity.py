"""Long-term identity keys and the PKI of the active threat model.

Under ``--secagg-threat-model active`` every virtual client has an Ed25519 identity key
for the whole run (Bonawitz et al., CCS 2017, Sec. 6 and Fig. 4, Round 0 with signed
keys): it signs the client's advertised X25519 keys in every round and the survivor set
in the ConsistencyCheck. Every party must learn every client's verify key from a channel
the server does not control, or the server could substitute keys and unmask a chosen
client. That channel is the torch.distributed rendezvous store (:attr:`World.store`,
served by torchrun's agent or by our launcher, not by the fedsim server's code):

- each client process writes the verify keys of the clients it hosts, before its first
  round, under ``pki/<client id>``, write-once (``compare_set`` from empty: the
  first writer wins, and a process that finds another key under its client's name stops
  with :class:`IdentityConflict` naming the client: a squatting client can deny service,
  never impersonate silently);
- the server and every client process read the whole population's verify keys from
  the store and hand them to :class:`secagg.protocol.ServerRound` / ``ClientRound``.

What this assumes (the README's threat model says it too): the store is not run by the
adversarial server. Under torchrun it lives in the elastic agent, apart from the server's
rank; under the local launcher rank 0 is the launching process and hosts the store, so
there the PKI stops a server whose protocol messages deviate, not one that rewrites its
own store. Client ids are bound to processes by the launch (which rank hosts which id is
public: :class:`fedsim.population.Population`).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch.distributed as dist
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsim.errors import FedsimError
from secagg.consistency import VERIFY_KEY_BYTES, verify_key_bytes

__all__ = [
    "PKI_PREFIX",
    "ClientPKI",
    "IdentityConflict",
    "client_pki",
    "local_pki",
    "make_identities",
    "publish_verify_keys",
    "read_verify_keys",
]

logger = logging.getLogger(__name__)

PKI_PREFIX = "pki/"
"""Store key of client u's verify key, under the world store's own prefix: ``pki/<u>`` (32 raw bytes)."""


class IdentityConflict(FedsimError, RuntimeError):
    """The store holds another verify key under a hosted client's name, or a malformed one."""


def make_identities(client_ids: Iterable[int]) -> dict[int, Ed25519PrivateKey]:
    """A fresh Ed25519 identity key per client (from the OS CSPRNG, via ``cryptography``)."""
    return {cid: Ed25519PrivateKey.generate() for cid in client_ids}


def publish_verify_keys(store: dist.Store, identities: Mapping[int, Ed25519PrivateKey]) -> None:
    """Write each client's verify key once; :class:`IdentityConflict` if a name is taken."""
    for cid, key in identities.items():
        mine = verify_key_bytes(key)
        held = store.compare_set(PKI_PREFIX + str(cid), "", mine)
        if bytes(held) != mine:
            raise IdentityConflict(
                f"the rendezvous store already holds another verify key for client {cid}: "
                "another process claimed this client's identity; refusing to run under it"
            )
    logger.debug("published %d verify keys", len(identities))


def read_verify_keys(store: dist.Store, client_ids: Iterable[int], timeout_s: float) -> dict[int, bytes]:
    """Every client's verify key, waiting at most ``timeout_s`` for all of them to appear."""
    ids = sorted(client_ids)
    names = [PKI_PREFIX + str(cid) for cid in ids]
    try:
        store.wait(names, datetime.timedelta(seconds=timeout_s))
    except RuntimeError as exc:  # the store's timeout
        raise IdentityConflict(f"verify keys of the population did not all appear within {timeout_s:g} s: {exc}") from None
    keys = {cid: bytes(value) for cid, value in zip(ids, store.multi_get(names))}
    bad = [cid for cid, value in keys.items() if len(value) != VERIFY_KEY_BYTES]
    if bad:
        raise IdentityConflict(f"verify keys of clients {bad[:5]} in the store are not {VERIFY_KEY_BYTES} bytes")
    return keys


@dataclass(frozen=True)
class ClientPKI:
    """A client process's view of the PKI: its hosted clients' identity keys, everyone's verify keys."""

    identities: Mapping[int, Ed25519PrivateKey]
    verify_keys: Mapping[int, bytes]


def local_pki(client_ids: Iterable[int]) -> ClientPKI:
    """Fresh identities for ``client_ids`` and their verify keys, made in this process
    without a store: for rounds run in memory (attack scenarios, tests, benchmarks)."""
    identities = make_identities(client_ids)
    return ClientPKI(identities, {cid: verify_key_bytes(key) for cid, key in identities.items()})


def client_pki(store: dist.Store, hosted: Iterable[int], population: Iterable[int], timeout_s: float) -> ClientPKI:
    """Make and publish the hosted clients' identities, then read the population's verify keys."""
    identities = make_identities(hosted)
    publish_verify_keys(store, identities)
    return ClientPKI(identities, read_verify_keys(store, population, timeout_s))
