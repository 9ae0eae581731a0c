"""Frames: the binary envelope of every message between the server and a client process.

A frame is one contiguous uint8 tensor: a fixed-size header, then a body of exactly the
length the header announces (:mod:`fedsim.transport.relay` sends it). Never a pickle: a process
that receives a frame parses these bytes and nothing else runs. The receiver reads the
header alone first and checks the announced length against its limit for the frame's
(kind, stage) (:data:`BodyLimit`) before it allocates the body.

Header (24 bytes, big-endian)::

    magic "FSRL" | version u8 | kind u8 | stage u8 | 0 u8 | round u64 | body length u64

Body: a map from keys (a virtual client id for protocol messages, a field number for the
job's own frames) to byte strings, batching every virtual client a process hosts::

    count u32 | count x (key u64 | length u64 | bytes) | "FEND"

The end marker catches a body that is not the frame the header announced (a stream out
of step, a truncated or corrupt sender).

Received entries are read-only ``memoryview`` slices of the body (no copy: a masked
input of 10^6 ring elements is 4 MB); ``bytes(entry)`` when a copy is wanted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsim.errors import FedsimError
from fedsim.transport.vocabulary import FRAME_STAGES, Kind

__all__ = [
    "HEADER_BYTES",
    "BodyLimit",
    "Frame",
    "FrameError",
    "FrameTooLarge",
    "decode_body",
    "decode_header",
    "encode_frame",
]

MAGIC = b"FSRL"
VERSION = 1
END_MARKER = b"FEND"

_HEADER = struct.Struct(">4sBBBBQQ")
_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">QQ")
HEADER_BYTES: int = _HEADER.size


class FrameError(FedsimError, ValueError):
    """Bytes that are not a well-formed frame; the message says what is wrong."""


class FrameTooLarge(FrameError):
    """A header announcing a body above the receiver's limit; the message names the limit."""


BodyLimit = Callable[[Kind, str], int]
"""The largest body a receiver accepts for a frame of this kind at this stage."""


@dataclass(frozen=True)
class Frame:
    """One message: its kind, round and stage, and the entries it batches."""

    kind: Kind
    round: int = 0
    stage: str = ""
    entries: Mapping[int, bytes | memoryview] = field(default_factory=dict)

    def describe(self) -> str:
        """Short human description, e.g. ``REPLY round 3 ShareKeys``."""
        where = f" round {self.round}" if self.round else ""
        return f"{self.kind.name}{where}{' ' + self.stage if self.stage else ''}"


def encode_frame(frame: Frame, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``frame`` as one uint8 tensor, header then body, written once: into the front of
    ``buffer`` when it is a large enough uint8 tensor (reusing it spares fresh pages)."""
    if frame.stage not in FRAME_STAGES:
        raise FrameError(f"stage={frame.stage!r} is invalid: expected one of {FRAME_STAGES}")
    entries = [(int(key), memoryview(value).cast("B")) for key, value in frame.entries.items()]
    size = _COUNT.size + sum(_ENTRY.size + len(value) for _, value in entries) + len(END_MARKER)
    total = HEADER_BYTES + size
    fits = buffer is not None and buffer.dtype == torch.uint8 and buffer.numel() >= total
    data = buffer[:total] if fits else torch.empty(total, dtype=torch.uint8)
    view = memoryview(data.numpy())
    _HEADER.pack_into(view, 0, MAGIC, VERSION, int(frame.kind), FRAME_STAGES.index(frame.stage), 0, frame.round, size)
    view = view[HEADER_BYTES:]
    _COUNT.pack_into(view, 0, len(entries))
    offset = _COUNT.size
    for key, value in entries:
        _ENTRY.pack_into(view, offset, key, len(value))
        offset += _ENTRY.size
        view[offset : offset + len(value)] = value
        offset += len(value)
    view[offset:] = END_MARKER
    return data


@dataclass(frozen=True)
class Header:
    """A parsed header: what the body will be."""

    kind: Kind
    round: int
    stage: str
    body_bytes: int


def decode_header(data: bytes | memoryview, max_body_bytes: int | BodyLimit) -> Header:
    """Parse and check a header; raise :class:`FrameError` naming what is wrong.

    ``max_body_bytes``: one limit for every frame, or a :data:`BodyLimit` asked with the
    header's kind and stage once both are known good. A body above it raises
    :class:`FrameTooLarge` (nothing of the body has been read or allocated yet).
    """
    if len(data) != HEADER_BYTES:
        raise FrameError(f"header has {len(data)} bytes, expected {HEADER_BYTES}")
    magic, version, kind, stage, reserved, round_idx, size = _HEADER.unpack(data)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"frame version {version}, expected {VERSION}")
    if kind not in Kind._value2member_map_:
        raise FrameError(f"unknown frame kind {kind}")
    if stage >= len(FRAME_STAGES) or reserved != 0:
        raise FrameError(f"bad stage byte {stage} or reserved byte {reserved}")
    header = Header(Kind(kind), round_idx, FRAME_STAGES[stage], size)
    minimum = _COUNT.size + len(END_MARKER)
    if size < minimum:
        raise FrameError(f"body length {size} outside [{minimum}, ...]: shorter than an empty body")
    limit = max_body_bytes if isinstance(max_body_bytes, int) else max_body_bytes(header.kind, header.stage)
    if size > limit:
        what = Frame(header.kind, round_idx, header.stage).describe()
        raise FrameTooLarge(
            f"body length {size} outside [{minimum}, {limit}]: {what} is over the limit of {limit} bytes "
            f"for {header.kind.name} at {header.stage or 'no stage'}"
        )
    return header


def decode_body(header: Header, body: torch.Tensor) -> Frame:
    """Parse a body received for ``header``; every byte must be accounted for."""
    view = memoryview(body.numpy()).toreadonly()
    if len(view) != header.body_bytes:
        raise FrameError(f"body has {len(view)} bytes, the header announced {header.body_bytes}")
    if view[-len(END_MARKER) :] != END_MARKER:
        raise FrameError("body does not end with the end marker (short or corrupt)")
    end = len(view) - len(END_MARKER)
    (count,) = _COUNT.unpack_from(view, 0)
    offset = _COUNT.size
    entries: dict[int, memoryview] = {}
    for _ in range(count):
        if offset + _ENTRY.size > end:
            raise FrameError(f"entry table overruns the body ({count} entries announced)")
        key, length = _ENTRY.unpack_from(view, offset)
        offset += _ENTRY.size
        if length > end - offset:
            raise FrameError(f"entry {key} announces {length} bytes, only {end - offset} left")
        if key in entries:
            raise FrameError(f"entry {key} appears twice")
        entries[key] = view[offset : offset + length]
        offset += length
    if offset != end:
        raise FrameError(f"{end - offset} stray bytes after {count} entries")
    return Frame(header.kind, header.round, header.stage, entries)


def pack_ids(ids: tuple[int, ...] | list[int]) -> bytes:
    """Client ids as big-endian u64s (a cohort, survivors, the clients who train)."""
    return np.asarray(ids, dtype=">u8").tobytes()


def unpack_ids(data: bytes | memoryview, what: str) -> tuple[int, ...]:
    """Inverse of :func:`pack_ids`; ids must be distinct, sorted and >= 1."""
    if len(data) % 8:
        raise FrameError(f"{what}: {len(data)} bytes is not a whole number of u64 ids")
    ids = tuple(int(i) for i in np.frombuffer(data, dtype=">u8"))
    if any(i < 1 for i in ids) or list(ids) != sorted(set(ids)):
        raise FrameError(f"{what}: ids must be distinct, sorted and >= 1")
    return ids
