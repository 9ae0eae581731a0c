"""The protocol's stage names: one list for the library and everything built on it.

Bonawitz et al., CCS 2017, Fig. 4 (Rounds 0-4), in protocol order; the server and every
client use these names, and fedsim's transport (:mod:`fedsim.transport.vocabulary`)
takes its stage names from here. Imports nothing, so naming a stage is cheap.
"""

from __future__ import annotations

__all__ = [
    "ABORTED",
    "ADVERTISE_KEYS",
    "CONSISTENCY_CHECK",
    "DONE",
    "MASKED_INPUT_COLLECTION",
    "SHARE_KEYS",
    "STAGES",
    "UNMASKING",
]

ADVERTISE_KEYS = "AdvertiseKeys"
SHARE_KEYS = "ShareKeys"
MASKED_INPUT_COLLECTION = "MaskedInputCollection"
CONSISTENCY_CHECK = "ConsistencyCheck"
UNMASKING = "Unmasking"
STAGES: tuple[str, ...] = (ADVERTISE_KEYS, SHARE_KEYS, MASKED_INPUT_COLLECTION, CONSISTENCY_CHECK, UNMASKING)
"""Stage names of Bonawitz et al., CCS 2017, Fig. 4 (Rounds 0-4), in protocol order."""
DONE = "Done"
"""Stage of a party whose round is over."""
ABORTED = "Aborted"
"""Stage of a party that gave up the round (a refusing client, an aborted server)."""
