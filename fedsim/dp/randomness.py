"""Every secret random source of fedsim, in one file to audit.

Privacy rests on randomness the adversary cannot predict: DP noise predictable from a
public seed protects nothing, and amplification by subsampling holds only while the
sample stays secret. So no secret draw ever follows the run's public ``seed`` (which
fixes the data split, the partition, the LoRA initialisation and injected dropouts), and
every secret draw starts here:

=====================================  ===========================  =====================
what                                   where it is used             source
=====================================  ===========================  =====================
DP-SGD noise N(0, σ²C²)                :mod:`fedsim.client.trainer`  :func:`secret_generator`
Poisson sampling of each batch         :mod:`fedsim.client.trainer`  :func:`secret_generator`
client-level noise shares              :mod:`fedsim.client.loop`     :func:`secret_generator`
stochastic-rounding coins (encoding)   :mod:`fedsim.client.loop`     :func:`secret_generator`
each round's cohort                    :mod:`fedsim.population`      :func:`cohort_rng`
secure-aggregation session id          :mod:`fedsim.server.loop`     :func:`session_id`
=====================================  ===========================  =====================

The secure-aggregation protocol's own keys and masks (X25519, HKDF, AES-CTR) are drawn
inside :mod:`secagg` from ``cryptography``; nothing here touches them.

Known limit: torch generators (Mersenne Twister on CPU, Philox on CUDA) are not
cryptographic; they are seeded with 63 bits from the OS CSPRNG.
"""

from __future__ import annotations

import os
import secrets

import torch

from secagg.params import SESSION_BYTES

__all__ = ["cohort_rng", "secret_generator", "session_id"]


def secret_generator(device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded with 63 bits from the OS CSPRNG."""
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63))
    return generator


def cohort_rng() -> secrets.SystemRandom:
    """The OS CSPRNG, for drawing who takes part in a round."""
    return secrets.SystemRandom()


def session_id() -> bytes:
    """A fresh secure-aggregation session id (so no message replays across sessions)."""
    return os.urandom(SESSION_BYTES)
