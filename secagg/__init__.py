"""secagg: pairwise-masked secure aggregation of integer vectors (Bonawitz et al. 2017).

Standalone: depends on ``cryptography``, ``torch`` (CPU int32 tensors) and ``numpy``
only.  Modules, one concept each:

- :mod:`secagg.encoding`: fixed-point code into Z_(2^32) and wrap-around arithmetic;
- :mod:`secagg.prg`: the AES-256-CTR keystream that expands mask keys;
- :mod:`secagg.agreement`: X25519 + HKDF pairwise key agreement;
- :mod:`secagg.masking`: masking inputs and unmasking their sum.
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
    check_ring,
    fixed_point_frac_bits,
    wrapping_add,
    wrapping_add_,
    wrapping_sub_,
    wrapping_sum,
)
from secagg.masking import MASK_NONCE, mask_input, mask_input_, pairwise_mask_sign, unmask_sum
from secagg.prg import Keystream, keystream_into

__all__ = [
    "MASK_KEY_BYTES",
    "MASK_NONCE",
    "PUBLIC_KEY_BYTES",
    "SUPPORTED_MODULUS_BITS",
    "FixedPointCodec",
    "Keystream",
    "check_ring",
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
    "unmask_sum",
    "wrapping_add",
    "wrapping_add_",
    "wrapping_sub_",
    "wrapping_sum",
]
