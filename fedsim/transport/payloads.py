"""What the job's own frames carry, in fixed binary layouts: float vectors and round reports.

The secure sum's messages are ``secagg``'s; these are the rest of a round's traffic
(:mod:`fedsim.server.loop`, :mod:`fedsim.client.loop`): the global state the server
sends (public), and what each client says it ran in local training (the mechanism, never
data). Decoders check every length and range and raise
:class:`~fedsim.transport.framing.FrameError`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import torch

from fedsim.transport.framing import FrameError

__all__ = ["RoundReport", "pack_report", "pack_vector", "unpack_report", "unpack_vector"]

_REPORT = struct.Struct(">QQdd")  # client id, local steps, sample rate q, noise multiplier


@dataclass(frozen=True)
class RoundReport:
    """What a client tells the server after local training: the mechanism it ran, nothing about data."""

    client: int
    steps: int
    sample_rate: float
    noise_multiplier: float


def pack_vector(vector: torch.Tensor) -> bytes:
    """A flat float tensor as little-endian float32 bytes."""
    return vector.detach().reshape(-1).to(device="cpu", dtype=torch.float32).numpy().astype("<f4").tobytes()


def unpack_vector(data: bytes, dim: int, what: str) -> torch.Tensor:
    """Inverse of :func:`pack_vector`: exactly ``dim`` finite float32 values."""
    if len(data) != 4 * dim:
        raise FrameError(f"{what}: {len(data)} bytes, expected {dim} float32 values")
    vector = torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32))
    if not bool(torch.isfinite(vector).all()):
        raise FrameError(f"{what}: holds NaN or infinite values")
    return vector


def pack_report(report: RoundReport) -> bytes:
    """One client's round report."""
    return _REPORT.pack(report.client, report.steps, report.sample_rate, report.noise_multiplier)


def unpack_report(data: bytes, client_id: int, max_steps: int) -> RoundReport:
    """Inverse of :func:`pack_report`, checked: the right client, 0..max_steps steps, q in (0, 1], σ > 0."""
    if len(data) != _REPORT.size:
        raise FrameError(f"report of client {client_id}: {len(data)} bytes, expected {_REPORT.size}")
    client, steps, sample_rate, noise = _REPORT.unpack(data)
    if client != client_id:
        raise FrameError(f"report filed under client {client_id} names client {client}")
    if not 0 <= steps <= max_steps:
        raise FrameError(f"report of client {client_id}: steps={steps} outside [0, {max_steps}]")
    if not (0 < sample_rate <= 1 and math.isfinite(noise) and noise > 0):
        raise FrameError(f"report of client {client_id}: sample_rate={sample_rate}, noise_multiplier={noise} out of range")
    return RoundReport(client, steps, sample_rate, noise)
