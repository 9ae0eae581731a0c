"""The PKI of the active threat model over a real torch.distributed store."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from fedsim.secure_sum.identity import (
    PKI_PREFIX,
    IdentityConflict,
    local_pki,
    make_identities,
    publish_verify_keys,
    read_verify_keys,
)
from secagg.consistency import verify_key_bytes


def test_every_party_reads_the_published_keys() -> None:
    store = dist.HashStore()
    first, second = make_identities([1, 3]), make_identities([2])
    publish_verify_keys(store, first)
    publish_verify_keys(store, second)
    keys = read_verify_keys(store, [1, 2, 3], timeout_s=1.0)
    assert keys == {cid: verify_key_bytes(k) for cid, k in {**first, **second}.items()}


def test_a_squatter_cannot_replace_a_published_key() -> None:
    """The attack: a client writes its own key under a victim's name, before or after it."""
    store = dist.HashStore()
    victim = make_identities([2])
    publish_verify_keys(store, victim)
    with pytest.raises(IdentityConflict, match="client 2"):
        publish_verify_keys(store, make_identities([2]))
    assert read_verify_keys(store, [2], 1.0)[2] == verify_key_bytes(victim[2])


def test_the_victim_of_a_squatter_stops_named() -> None:
    store = dist.HashStore()
    publish_verify_keys(store, make_identities([5]))  # the squatter was first
    with pytest.raises(IdentityConflict, match="client 5"):
        publish_verify_keys(store, make_identities([5]))


def test_missing_or_malformed_keys_are_named() -> None:
    store = dist.HashStore()
    publish_verify_keys(store, make_identities([1]))
    with pytest.raises(IdentityConflict, match="did not all appear"):
        read_verify_keys(store, [1, 2], timeout_s=0.2)
    store.set(PKI_PREFIX + "2", b"short")
    with pytest.raises(IdentityConflict, match=r"clients \[2\]"):
        read_verify_keys(store, [1, 2], timeout_s=0.2)


def test_a_local_pki_pairs_each_identity_with_its_verify_key() -> None:
    pki = local_pki([1, 2, 3])
    assert sorted(pki.verify_keys) == [1, 2, 3]
    assert all(pki.verify_keys[c] == verify_key_bytes(pki.identities[c]) for c in (1, 2, 3))
    assert len(set(pki.verify_keys.values())) == 3
