"""A resumed run's ledger: segments, each signed by its own key, chained to the one before.

The attacks: a segment removed (the last one, or one in the middle), segments reordered,
a foreign segment (re-signed with a key nobody pinned), the previous head's copy edited,
and a pin missing. Each must be named, never pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accounting import LEDGER_FORMAT_VERSION, Ledger, LedgerError, LedgerRecord, PoissonSubsampledGaussian, audit_ledger, read_ledger
from accounting.ledger import SEGMENT_FORMAT_VERSION, _sha256, canonical_json, read_segments

DELTA = 1e-5


def _round(round_idx: int, clients: int = 2) -> list[LedgerRecord]:
    return [LedgerRecord(round_idx, c, PoissonSubsampledGaussian(1.0 + 0.1 * c, 0.05, 3), DELTA) for c in range(1, clients + 1)]


def _segmented(path: Path, segments: int = 3) -> list[str]:
    """A ledger written by ``segments`` runs (one round each); their fingerprints in order."""
    ledger = Ledger(path)
    ledger.append(_round(1))
    fingerprints = [ledger.fingerprint]
    for index in range(2, segments + 1):
        ledger = Ledger.resume(path)
        ledger.append(_round(index))
        fingerprints.append(ledger.fingerprint)
    return fingerprints


def _problems(path: Path, **pins) -> list[str]:
    return [str(p) for p in audit_ledger(path, **pins).problems]


def test_a_resumed_ledger_verifies_segment_by_segment_with_every_pin(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    fingerprints = _segmented(path)
    assert len(set(fingerprints)) == 3  # a fresh key per run
    audit = audit_ledger(path, fingerprints=fingerprints)
    assert audit.ok, [str(p) for p in audit.problems]
    assert [(s.segment, s.first, s.last, s.fingerprint) for s in audit.segments] == [
        (1, 1, 2, fingerprints[0]), (2, 3, 5, fingerprints[1]), (3, 6, 8, fingerprints[2])
    ]
    assert read_ledger(path) == _round(1) + _round(2) + _round(3)  # segment lines are not records
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    segment_line = lines[2]
    assert segment_line["format_version"] == SEGMENT_FORMAT_VERSION and segment_line["kind"] == "segment"
    assert segment_line["segment"] == 2 and segment_line["prev"] == _sha256(path.read_text().splitlines()[1])
    previous = segment_line["previous"]
    assert (previous["records"], previous["fingerprint"]) == (2, fingerprints[0])
    assert previous["head"] == segment_line["prev"]
    assert all(line["format_version"] == LEDGER_FORMAT_VERSION for line in lines if "kind" not in line)
    assert json.loads((tmp_path / "ledger.sig").read_text())["fingerprint"] == fingerprints[2]


def test_a_ledger_never_resumed_is_unchanged_and_one_pin_still_works(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    (fingerprint,) = _segmented(path, segments=1)
    assert audit_ledger(path, fingerprint=fingerprint).ok
    assert not any("kind" in json.loads(text) for text in path.read_text().splitlines())
    assert read_segments(path) == []


def test_the_last_segment_removed_is_named_when_its_pin_is_given(tmp_path: Path) -> None:
    """The honest-looking rollback: drop segment 3's lines and put segment 2's key and head back."""
    path = tmp_path / "ledger.jsonl"
    fingerprints = _segmented(path, segments=2)
    saved = {name: (tmp_path / name).read_bytes() for name in ("ledger.jsonl", "ledger.pub", "ledger.sig")}
    Ledger.resume(path).append(_round(3))
    fingerprints.append(audit_ledger(path).fingerprint)
    for name, data in saved.items():
        (tmp_path / name).write_bytes(data)
    assert audit_ledger(path, fingerprints=fingerprints[:2]).ok  # self-consistent without the third pin...
    problems = _problems(path, fingerprints=fingerprints)
    assert any("3 fingerprints are pinned" in p and f"segment 3 (pinned {fingerprints[2]}) missing" in p for p in problems), problems


def test_a_middle_segment_removed_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    fingerprints = _segmented(path)
    lines = path.read_text().splitlines()
    path.write_text("".join(text + "\n" for text in lines[:2] + lines[5:]))  # segment 2's lines gone
    problems = _problems(path, fingerprints=fingerprints)
    assert any("says segment 3, but it begins segment 2" in p for p in problems), problems
    assert any("missing" in p for p in problems), problems


def test_segments_reordered_are_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    fingerprints = _segmented(path)
    lines = path.read_text().splitlines()
    path.write_text("".join(text + "\n" for text in lines[:2] + lines[5:] + lines[2:5]))
    problems = _problems(path, fingerprints=fingerprints)
    assert any("out of order" in p or "swapped" in p for p in problems), problems
    # pins given in the wrong order name the segment whose key does not match
    path2 = tmp_path / "again" / "ledger.jsonl"
    path2.parent.mkdir()
    order = _segmented(path2)
    problems = _problems(path2, fingerprints=[order[1], order[0], order[2]])
    assert any(p.startswith("record 1") and "segment 1 (records 1..2) is signed with key" in p and "not in the order" in p
               for p in problems), problems


def test_a_foreign_segment_is_named(tmp_path: Path) -> None:
    """Segment 2 written by someone with their own key (here: records of a far smaller ε)."""
    honest = _segmented(tmp_path / "honest.jsonl", segments=2)
    path = tmp_path / "ledger.jsonl"
    first = Ledger(path)
    first.append(_round(1))
    Ledger.resume(path, signing_key=Ed25519PrivateKey.generate()).append(
        [LedgerRecord(2, 1, PoissonSubsampledGaussian(50.0, 0.05, 3), DELTA)]
    )
    assert audit_ledger(path).ok  # self-consistent: only the pins can tell
    problems = _problems(path, fingerprints=[first.fingerprint, honest[1]])
    assert any("holds key" in p and f"not the pinned key {honest[1]}" in p for p in problems), problems


def test_an_edited_copy_of_the_previous_head_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    fingerprints = _segmented(path, segments=2)
    lines = path.read_text().splitlines()
    segment = json.loads(lines[2])
    segment["previous"]["signature"] = "00" * 64
    lines[2] = canonical_json(segment)
    path.write_text("".join(text + "\n" for text in lines))
    problems = _problems(path, fingerprints=fingerprints)
    assert any("does not verify with its key" in p for p in problems), problems
    segment["previous"]["fingerprint"] = fingerprints[1]  # claim the wrong key for segment 1
    lines[2] = canonical_json(segment)
    path.write_text("".join(text + "\n" for text in lines))
    assert any("is not the SHA-256 of previous.key" in p for p in _problems(path, fingerprints=fingerprints))


def test_an_unpinned_segment_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    fingerprints = _segmented(path)
    problems = _problems(path, fingerprints=fingerprints[:2])
    assert any("not pinned: segment 3 (records 6..8)" in p for p in problems), problems
    assert any("not pinned" in p for p in _problems(path, fingerprint=fingerprints[0]))


def test_resume_refuses_a_ledger_it_cannot_continue(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    _segmented(path, segments=1)
    (tmp_path / "ledger.sig").unlink()
    with pytest.raises(LedgerError, match="cannot be continued: ledger.sig is missing"):
        Ledger.resume(path)
    torn = tmp_path / "torn" / "ledger.jsonl"
    torn.parent.mkdir()
    _segmented(torn, segments=1)
    torn.write_bytes(torn.read_bytes()[:-5])
    with pytest.raises(LedgerError, match="truncated"):
        Ledger.resume(torn)


def test_records_written_after_the_last_signature_are_covered_by_the_next_segment(tmp_path: Path) -> None:
    """A crash between a round's fsync and its signature: the resumed run commits to the
    last *signed* head; the unsigned records stay in the chain, signed by the next key."""
    path = tmp_path / "ledger.jsonl"
    first = Ledger(path)
    first.append(_round(1))
    signed = (tmp_path / "ledger.sig").read_bytes()
    first.append(_round(2))
    (tmp_path / "ledger.sig").write_bytes(signed)  # as if killed before signing round 2
    second = Ledger.resume(path)
    second.append(_round(3))
    segment = json.loads(path.read_text().splitlines()[4])
    assert segment["previous"]["records"] == 2 and segment["segment"] == 2
    audit = audit_ledger(path, fingerprints=[first.fingerprint, second.fingerprint])
    assert audit.ok, [str(p) for p in audit.problems]
    assert read_ledger(path) == _round(1) + _round(2) + _round(3)
