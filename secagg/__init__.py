"""secagg: secure aggregation of integer vectors with dropouts (Bonawitz et al. 2017,
with the SecAgg+ graph of Bell et al. 2020).

Standalone: depends on ``cryptography``, ``numpy`` and ``torch`` (CPU tensors for the
fixed-point codec) only.  Modules, one concept each:

- :mod:`secagg.protocol`: the round, ``ClientRound`` / ``ServerRound`` / ``run_in_memory``;
- :mod:`secagg.client`, :mod:`secagg.server`: the two sides' state machines;
- :mod:`secagg.stages`: the stage names, one list for the library and its users;
- :mod:`secagg.messages`: the fixed binary wire format and ``ProtocolError``;
- :mod:`secagg.params`: ``ProtocolParams`` and the choice/validation of (t, k);
- :mod:`secagg.graph`: complete or random Harary neighbour graph;
- :mod:`secagg.shamir`: t-of-n Shamir sharing of 256-bit keys, cached Lagrange;
- :mod:`secagg.channel`: AES-GCM encryption of shares between clients;
- :mod:`secagg.consistency`: Ed25519 signatures of the ConsistencyCheck;
- :mod:`secagg.agreement`: X25519 + HKDF key derivation;
- :mod:`secagg.masking`: adding and removing AES-CTR masks in place;
- :mod:`secagg.prg`: the AES-256-CTR keystream;
- :mod:`secagg.encoding`: fixed-point codes in Z_(2^32) / Z_(2^64), weighted means.

The names below are loaded on first use (PEP 562), so ``import secagg.stages`` or
``secagg.params`` does not pull in torch through the codec.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ClientRound": "secagg.protocol",
    "FixedPointCodec": "secagg.encoding",
    "Keystream": "secagg.prg",
    "MASK_KEY_BYTES": "secagg.agreement",
    "MASK_NONCE": "secagg.masking",
    "PUBLIC_KEY_BYTES": "secagg.agreement",
    "ProtocolError": "secagg.protocol",
    "ProtocolParams": "secagg.params",
    "Rejection": "secagg.messages",
    "SUPPORTED_MODULUS_BITS": "secagg.encoding",
    "ServerRound": "secagg.protocol",
    "WeightedMeanCodec": "secagg.encoding",
    "add_masks_": "secagg.masking",
    "as_ring_array": "secagg.encoding",
    "check_ring": "secagg.encoding",
    "check_secagg_params": "secagg.params",
    "choose_secagg_params": "secagg.params",
    "fixed_point_frac_bits": "secagg.encoding",
    "generate_private_key": "secagg.agreement",
    "keystream_into": "secagg.prg",
    "load_public_key": "secagg.agreement",
    "mask_input": "secagg.masking",
    "mask_input_": "secagg.masking",
    "mask_key_info": "secagg.agreement",
    "pairwise_mask_key": "secagg.agreement",
    "pairwise_mask_sign": "secagg.masking",
    "public_key_bytes": "secagg.agreement",
    "ring_dtype": "secagg.encoding",
    "run_in_memory": "secagg.protocol",
    "unmask_sum": "secagg.masking",
    "wrapping_add": "secagg.encoding",
    "wrapping_add_": "secagg.encoding",
    "wrapping_sub_": "secagg.encoding",
    "wrapping_sum": "secagg.encoding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'secagg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
