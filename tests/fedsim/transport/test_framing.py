"""Relay frames in-process: round trips of batched client messages, and every malformed
header, body and id list rejected with its reason."""

from __future__ import annotations

import os
import struct

import pytest
import torch

from fedsim.transport.framing import (
    HEADER_BYTES,
    Frame,
    FrameError,
    FrameTooLarge,
    decode_body,
    decode_header,
    encode_frame,
    pack_ids,
    unpack_ids,
)
from fedsim.transport.vocabulary import Kind


def _roundtrip(frame: Frame, max_body: int = 1 << 20) -> Frame:
    data = encode_frame(frame)
    parsed = decode_header(data[:HEADER_BYTES].numpy().tobytes(), max_body)
    return decode_body(parsed, data[HEADER_BYTES:])


def test_frame_roundtrip_batches_many_clients() -> None:
    entries = {cid: os.urandom(cid * 37) for cid in range(1, 11)}
    entries[7] = b""  # empty messages are fine
    frame = Frame(Kind.STAGE, 12, "ShareKeys", entries)
    assert _roundtrip(frame) == frame
    assert _roundtrip(Frame(Kind.BYE)) == Frame(Kind.BYE)
    big = Frame(Kind.REPLY, 2, "MaskedInputCollection", {3: os.urandom(200_000)})  # a large body, encoded into a reused buffer
    reused = torch.empty(1 << 19, dtype=torch.uint8)
    data = encode_frame(big, reused)
    assert data.data_ptr() == reused.data_ptr() and _roundtrip(big) == big


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: b"XXXX" + h[4:], "magic"),
        (lambda h: h[:4] + b"\x09" + h[5:], "version"),
        (lambda h: h[:5] + b"\x63" + h[6:], "kind"),
        (lambda h: h[:6] + b"\x17" + h[7:], "stage"),
        (lambda h: h[:16] + struct.pack(">Q", 1 << 40), "body length"),
        (lambda h: h[:-1], "header has"),
    ],
)
def test_bad_headers_are_rejected_with_the_reason(mutate, reason: str) -> None:
    header = encode_frame(Frame(Kind.REPLY, 3, "Unmasking", {1: b"abc"}))[:HEADER_BYTES]
    with pytest.raises(FrameError, match=reason):
        decode_header(mutate(header.numpy().tobytes()), 1 << 20)


def _tampered_body(edit) -> FrameError:
    data = encode_frame(Frame(Kind.REPLY, 3, "Unmasking", {1: b"abc", 2: b"defg"}))
    parsed = decode_header(data[:HEADER_BYTES].numpy().tobytes(), 1 << 20)
    raw = bytearray(data[HEADER_BYTES:].numpy().tobytes())
    edit(raw)
    with pytest.raises(FrameError) as info:
        decode_body(parsed, torch.frombuffer(raw, dtype=torch.uint8))
    return info.value


def test_bad_bodies_are_rejected_with_the_reason() -> None:
    assert "end marker" in str(_tampered_body(lambda raw: raw.__setitem__(slice(-4, None), bytes(4))))
    assert "announces" in str(_tampered_body(lambda raw: raw.__setitem__(slice(12, 20), struct.pack(">Q", 99))))
    assert "stray" in str(_tampered_body(lambda raw: raw.__setitem__(slice(0, 4), struct.pack(">I", 1))))
    assert "twice" in str(_tampered_body(lambda raw: raw.__setitem__(slice(23, 31), struct.pack(">Q", 1))))


def test_id_lists_must_be_sorted_distinct_and_positive() -> None:
    assert unpack_ids(pack_ids([1, 5, 9]), "cohort") == (1, 5, 9)
    for bad in ([2, 1], [1, 1], [0, 3]):
        with pytest.raises(FrameError, match="cohort"):
            unpack_ids(pack_ids(bad), "cohort")
    with pytest.raises(FrameError, match="whole number"):
        unpack_ids(b"\x00" * 7, "cohort")


def test_a_limit_per_kind_and_stage_is_asked_only_once_the_header_is_sound() -> None:
    asked = []

    def limit(kind: Kind, stage: str) -> int:
        asked.append((kind, stage))
        return 64 * 1024 if stage == "ShareKeys" else 1 << 30

    def header(stage: str, size: int) -> bytes:
        data = bytearray(encode_frame(Frame(Kind.REPLY, 3, stage))[:HEADER_BYTES].numpy().tobytes())
        struct.pack_into(">Q", data, 16, size)
        return bytes(data)

    assert decode_header(header("MaskedInputCollection", 10 << 20), limit).body_bytes == 10 << 20
    with pytest.raises(FrameTooLarge, match="REPLY round 3 ShareKeys is over the limit of 65536 bytes for REPLY at ShareKeys"):
        decode_header(header("ShareKeys", 10 << 20), limit)
    with pytest.raises(FrameError, match="bad magic"):
        decode_header(b"XXXX" + header("ShareKeys", 1 << 40)[4:], limit)
    assert asked == [(Kind.REPLY, "MaskedInputCollection"), (Kind.REPLY, "ShareKeys")]
    with pytest.raises(FrameError, match="shorter than an empty body"):
        decode_header(header("ShareKeys", 7), limit)
