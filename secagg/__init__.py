"""secagg: secure aggregation of integer vectors with dropouts (Bonawitz et al. 2017,
with the SecAgg+ graph of Bell et al. 2020).

Standalone: depends on ``cryptography``, ``numpy`` and ``torch`` (CPU tensors for the
fixed-point codec) only.  Modules, one concept each:

- :mod:`secagg.protocol`: the round, ``ClientRound`` / ``ServerRound`` / ``run_in_memory``;
- :mod:`secagg.client`, :mod:`secagg.server`: the two sides' state machines;
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
"""

from secagg.agreement import (
    MASK_KEY_BYTES,
    PUBLIC_KEY_BYTES,
    generate_private_key,
    load_public_key,
    mask_key_info,
    pairwise_mask_key,
    public_key_bytes,
)
from secagg.encoding import (
    SUPPORTED_MODULUS_BITS,
    FixedPointCodec,
    WeightedMeanCodec,
    as_ring_array,
    check_ring,
    fixed_point_frac_bits,
    ring_dtype,
    wrapping_add,
    wrapping_add_,
    wrapping_sub_,
    wrapping_sum,
)
from secagg.masking import MASK_NONCE, add_masks_, mask_input, mask_input_, pairwise_mask_sign, unmask_sum
from secagg.params import ProtocolParams, check_secagg_params, choose_secagg_params
from secagg.prg import Keystream, keystream_into
from secagg.protocol import ClientRound, ProtocolError, ServerRound, run_in_memory

__all__ = [
    "MASK_KEY_BYTES",
    "MASK_NONCE",
    "PUBLIC_KEY_BYTES",
    "SUPPORTED_MODULUS_BITS",
    "ClientRound",
    "FixedPointCodec",
    "Keystream",
    "ProtocolError",
    "ProtocolParams",
    "ServerRound",
    "WeightedMeanCodec",
    "add_masks_",
    "as_ring_array",
    "check_ring",
    "check_secagg_params",
    "choose_secagg_params",
    "fixed_point_frac_bits",
    "generate_private_key",
    "keystream_into",
    "load_public_key",
    "mask_input",
    "mask_input_",
    "mask_key_info",
    "pairwise_mask_key",
    "pairwise_mask_sign",
    "public_key_bytes",
    "ring_dtype",
    "run_in_memory",
    "unmask_sum",
    "wrapping_add",
    "wrapping_add_",
    "wrapping_sub_",
    "wrapping_sum",
]
