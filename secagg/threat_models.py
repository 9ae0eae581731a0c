"""The threat models secure aggregation runs under: one list for the protocol, fedsim and the CLI.

Imports nothing (``fedsim --help`` reads it without loading torch).
"""

from __future__ import annotations

__all__ = ["ACTIVE", "SEMI_HONEST", "THREAT_MODELS"]

SEMI_HONEST = "semi-honest"
"""The server follows the protocol (it may be curious and collude with up to c clients);
clients may be malicious (Bonawitz et al., CCS 2017, Sec. 6.2's honest-but-curious server)."""

ACTIVE = "active"
"""The server may also deviate (substitute keys, lie about who dropped); clients need a
PKI and the ConsistencyCheck (Bonawitz et al., CCS 2017, Sec. 6.3)."""

THREAT_MODELS: tuple[str, ...] = (SEMI_HONEST, ACTIVE)
