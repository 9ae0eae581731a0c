"""The privacy ledger: append-only, hash-chained, signed JSON lines.

One line per release, in canonical JSON (sorted keys, no spaces, ASCII)::

    {"client":7,"delta":1e-05,"format_version":1,"mechanism":{"name":"poisson_subsampled_gaussian",
     "noise_multiplier":1.1,"sample_rate":0.01,"steps":50},"prev":"9f2c...","round":3,"seq":12}

* ``format_version`` is the layout of the line: :data:`LEDGER_FORMAT_VERSION` (1) for a
  record line, :data:`SEGMENT_FORMAT_VERSION` (2) for a segment line (below).
  It is bumped by any change to the line layout (a field added, removed, renamed or
  given another meaning, a change to canonicalisation or chaining) and never by a
  change to a mechanism: a mechanism's name, fields and meaning never change once
  released, a new one gets a new name instead (:mod:`accounting.mechanisms`). Lines
  written before versions existed have no ``format_version``; they are read as
  version 1, which is their layout. A line of any other version (an unknown, newer
  one, or not an integer) is refused, never guessed at: upgrade fedsim to read it.
  The field is part of the canonical line, so the hash chain and the signature
  cover it like every other field.
* ``seq`` numbers the lines 1, 2, 3, ... (records and segment lines alike): line n has seq n.
* ``prev`` is the SHA-256 (hex) of the previous record's line, :data:`GENESIS` for
  record 1: editing, deleting or moving a record breaks the chain at that record.
* After every :meth:`Ledger.append` (one round: the server's checkpoint) the lines are
  flushed and fsynced, then the head (number of records and hash of the last line) is
  signed with Ed25519 and the signature replaces ``ledger.sig`` atomically; the public
  key is ``ledger.pub`` (PEM) beside it. The key is generated per run and kept in
  memory only, so nobody can re-sign an edited ledger with it after the run.

Segments (a resumed run). The key lives in memory only, so a run that continues a ledger
after a crash or an interruption (``fedsim run --resume``) signs with a fresh key: it opens
a new *segment* with one **segment line** (:meth:`Ledger.resume`), then appends its records
as usual. The segment line is chained like any line and commits to the previous segment's
signed head::

    {"format_version":2,"kind":"segment","prev":"<hash of line n-1>","previous":{"fingerprint":"<fp>",
     "head":"<hash>","key":"<hex>","records":41,"signature":"<hex>"},"segment":2,"seq":n}

``previous`` is the previous segment's last signed head (``records``, ``head``), its
signature and the key that made it (raw Ed25519, hex; ``fingerprint`` is its SHA-256),
copied from ``ledger.sig`` and ``ledger.pub`` when the segment began; ``ledger.pub`` and
``ledger.sig`` then hold the new segment's key and head. So segment k's key is in segment
line k+1 (the last segment's in ``ledger.pub``), each segment is checked against its own
pinned fingerprint, and one file holds the whole chain. Records a segment wrote after its
last signature (a crash between the fsync of a round and its signature) lie between
``previous.records`` and the segment line: still chained, covered by the later segments'
signatures. Versions: the segment line is a new layout, so it has its own
``format_version``, 2 (:data:`SEGMENT_FORMAT_VERSION`); a version names one layout, so a
line with ``kind`` must be version 2 and a record line version 1. Record lines keep
version 1, whose layout they still have: a ledger of a run never resumed is byte for
byte what it was, and older readers refuse a resumed ledger at its segment line (an
unknown version) instead of composing it wrong.

A signature only proves *someone holding the key* signed: whoever rewrites the ledger
can also replace ``ledger.pub`` with a key of their own. So :func:`audit_ledger` takes
a pinned key or fingerprint (the one printed when the run started) and otherwise
reports the fingerprint it checked against, for the auditor to compare.

Every reported figure must be recomputable from this file alone
(:mod:`accounting.budget`), so the reader is strict: a malformed, truncated,
non-canonical, out-of-order or unchained line is an error naming its line and record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .mechanisms import CLIENT_LEVEL_MECHANISMS, Mechanism, PoissonSubsampledGaussian, mechanism_from_dict

__all__ = [
    "GENESIS",
    "LEDGER_FORMAT_VERSION",
    "LEDGER_FORMAT_VERSIONS",
    "Ledger",
    "LedgerAudit",
    "LedgerEntry",
    "LedgerError",
    "LedgerProblem",
    "LedgerRecord",
    "SEGMENT_FORMAT_VERSION",
    "SegmentAudit",
    "SegmentEntry",
    "SegmentStart",
    "SignedHead",
    "audit_ledger",
    "canonical_json",
    "fsync_directory",
    "key_fingerprint",
    "load_public_key",
    "normalize_fingerprint",
    "public_key_path",
    "write_atomically",
    "read_entries",
    "read_ledger",
    "signature_path",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: ``prev`` of record 1.
GENESIS = "0" * 64
#: The layout of the lines :class:`Ledger` writes (``format_version`` of every line).
LEDGER_FORMAT_VERSION = 1
#: The layout of a segment line (the first line of a resumed run's segment); the only
#: version a line with ``kind`` may have.
SEGMENT_FORMAT_VERSION = 2
#: The record-line layouts this reader understands. A line without ``format_version``
#: (written before versions existed) is read as version 1.
LEDGER_FORMAT_VERSIONS = (1,)
SIGNATURE_FORMAT = "fedsim-ledger-signature/1"
_SIGNED_PREFIX = b"fedsim-ledger-head/1\n"
_RECORD_FIELDS = ("round", "client", "mechanism", "delta")
_CHAIN_FIELDS = ("seq", "prev")
_SEGMENT_KIND = "segment"
_SEGMENT_FIELDS = ("kind", "segment", "previous")
_HEAD_FIELDS = ("fingerprint", "head", "key", "records", "signature")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_VERSION_FIELD = "format_version"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LedgerError(ValueError):
    """A ledger file that cannot be read back faithfully; ``line`` is 1-based (0 if n/a)."""

    def __init__(self, path: PathLike, line: int, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}, line {line}" if line else self.path
        super().__init__(f"{where}: {message}")


def canonical_json(data: Any) -> str:
    """The one serialisation that is hashed and signed: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _line_text(record: "Union[LedgerRecord, SegmentStart]", seq: int, prev: str, format_version: Optional[int]) -> str:
    """The canonical line of ``record`` (or a segment line) as line ``seq`` chained to ``prev`` (no newline).

    ``format_version`` None is the layout of the lines written before versions existed
    (no ``format_version`` field); the reader uses it to check such lines are canonical.
    """
    data = {**record.to_dict(), "seq": seq, "prev": prev}
    if format_version is not None:
        data[_VERSION_FIELD] = format_version
    return canonical_json(data)


def _check_index(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"LedgerRecord.{field} must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LedgerRecord:
    """One release: ``client``'s data went through ``mechanism`` in ``round``.

    ``client`` is the party whose guarantee this record feeds: a client id for
    sample-level DP (:class:`PoissonSubsampledGaussian`), ``None`` for a client-level
    round (:class:`ClientLevelGaussian`) or secure sum (:class:`DistributedSkellam`), which
    every member of the population shares.
    ``delta`` is the target delta the run was configured for.
    """

    round: int
    client: Optional[int]
    mechanism: Mechanism
    delta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "round", _check_index("round", self.round))
        if isinstance(self.mechanism, CLIENT_LEVEL_MECHANISMS):
            if self.client is not None:
                raise ValueError(f"LedgerRecord.client must be None for a client-level round, got {self.client!r}")
        elif isinstance(self.mechanism, PoissonSubsampledGaussian):
            object.__setattr__(self, "client", _check_index("client", self.client))
        else:
            raise ValueError(
                f"LedgerRecord.mechanism must be a mechanism object, got {type(self.mechanism).__name__}"
            )
        delta = self.delta
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0.0 < float(delta) < 1.0:
            raise ValueError(f"LedgerRecord.delta must be a number in (0, 1), got {delta!r}")
        object.__setattr__(self, "delta", float(delta))

    def to_dict(self) -> dict[str, Any]:
        """``{"round", "client", "mechanism": {"name", ...params}, "delta"}``."""
        return {
            "round": self.round,
            "client": self.client,
            "mechanism": self.mechanism.to_dict(),
            "delta": self.delta,
        }

    def to_json(self) -> str:
        """The record alone (no chain fields) in canonical JSON; floats round-trip exactly."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LedgerRecord":
        """Inverse of :meth:`to_dict`; rejects missing or unknown fields."""
        if not isinstance(data, Mapping):
            raise ValueError(f"LedgerRecord: expected a JSON object, got {type(data).__name__}")
        missing = [f for f in _RECORD_FIELDS if f not in data]
        unknown = sorted(set(data) - set(_RECORD_FIELDS))
        if missing or unknown:
            raise ValueError(f"LedgerRecord: missing field(s) {missing}, unknown field(s) {unknown}")
        return cls(
            round=data["round"],
            client=data["client"],
            mechanism=mechanism_from_dict(data["mechanism"]),
            delta=data["delta"],
        )

    @classmethod
    def from_json(cls, line: str) -> "LedgerRecord":
        """Parse :meth:`to_json` output (a trailing newline is allowed)."""
        return cls.from_dict(_loads_strict(line))


def _loads_strict(text: str) -> Any:
    """json.loads that rejects NaN/Infinity and duplicate keys, with a short message."""

    def reject_constant(name: str) -> float:
        raise ValueError(f"non-finite number {name} is not allowed")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"duplicate field(s) {duplicates}")
        return dict(pairs)

    try:
        return json.loads(text, parse_constant=reject_constant, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None


@dataclass(frozen=True)
class LedgerEntry:
    """A record as it sits in the file: its number, chain link, own hash and line."""

    seq: int
    prev: str
    hash: str
    line: int
    record: LedgerRecord


@dataclass(frozen=True)
class SignedHead:
    """A segment's signed head as the next segment line copies it: ``records`` lines up to
    hash ``head``, signed with the raw Ed25519 ``key`` (hex; ``fingerprint`` its SHA-256)."""

    records: int
    head: str
    fingerprint: str
    key: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "head": self.head, "key": self.key,
                "records": self.records, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: Any) -> "SignedHead":
        """Strict inverse of :meth:`to_dict` (shapes only: :meth:`problem` checks the signature)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"previous must be a JSON object, got {type(data).__name__}")
        missing = [f for f in _HEAD_FIELDS if f not in data]
        unknown = sorted(set(data) - set(_HEAD_FIELDS))
        if missing or unknown:
            raise ValueError(f"previous: missing field(s) {missing}, unknown field(s) {unknown}")
        records = data["records"]
        if isinstance(records, bool) or not isinstance(records, int) or records < 1:
            raise ValueError(f"previous.records must be an integer >= 1, got {records!r}")
        for name in ("fingerprint", "head", "key"):
            if not isinstance(data[name], str) or not _HEX64.fullmatch(data[name]):
                raise ValueError(f"previous.{name} must be 64 lowercase hex digits, got {data[name]!r}")
        if not isinstance(data["signature"], str) or not _HEX128.fullmatch(data["signature"]):
            raise ValueError(f"previous.signature must be 128 lowercase hex digits, got {data['signature']!r}")
        return cls(records, data["head"], data["fingerprint"], data["key"], data["signature"])

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.key))

    def problem(self) -> Optional[str]:
        """What is wrong with the head on its own (fingerprint vs key, signature), or None."""
        actual = key_fingerprint(self.public_key())
        if actual != self.fingerprint:
            return f"previous.fingerprint {self.fingerprint} is not the SHA-256 of previous.key ({actual})"
        try:
            self.public_key().verify(bytes.fromhex(self.signature), _signed_message(self.records, self.head))
        except InvalidSignature:
            return (f"the previous segment's signature over its head (record {self.records}, hash "
                    f"{self.head[:16]}...) does not verify with its key {self.fingerprint}")
        return None


@dataclass(frozen=True)
class SegmentStart:
    """The segment line: segment ``segment`` (2, 3, ...) begins; ``previous`` is the one before's signed head."""

    segment: int
    previous: SignedHead

    def to_dict(self) -> dict[str, Any]:
        return {"kind": _SEGMENT_KIND, "segment": self.segment, "previous": self.previous.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SegmentStart":
        missing = [f for f in _SEGMENT_FIELDS if f not in data]
        unknown = sorted(set(data) - set(_SEGMENT_FIELDS))
        if missing or unknown:
            raise ValueError(f"segment line: missing field(s) {missing}, unknown field(s) {unknown}")
        if data["kind"] != _SEGMENT_KIND:
            raise ValueError(f"kind must be {_SEGMENT_KIND!r}, got {data['kind']!r}")
        segment = data["segment"]
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 2:
            raise ValueError(f"segment must be an integer >= 2, got {segment!r}")
        return cls(segment, SignedHead.from_dict(data["previous"]))


@dataclass(frozen=True)
class SegmentEntry:
    """A segment line as it sits in the file."""

    seq: int
    prev: str
    hash: str
    line: int
    start: SegmentStart


# ------------------------------------------------------------------------------ keys


def public_key_path(ledger_path: PathLike) -> Path:
    """``ledger.pub`` beside ``ledger.jsonl``: the run's Ed25519 public key (PEM)."""
    return Path(ledger_path).with_suffix(".pub")


def signature_path(ledger_path: PathLike) -> Path:
    """``ledger.sig`` beside ``ledger.jsonl``: the signed head (JSON)."""
    return Path(ledger_path).with_suffix(".sig")


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as 64 lowercase hex digits; accepts a ``SHA256:`` prefix, colons and spaces."""
    cleaned = re.sub(r"[\s:]", "", str(text).strip())
    if cleaned.lower().startswith("sha256"):
        cleaned = cleaned[len("sha256"):]
    cleaned = cleaned.lower()
    if not _HEX64.fullmatch(cleaned):
        raise ValueError(f"fingerprint must be 64 hex digits (SHA-256 of the public key), got {text!r}")
    return cleaned


def load_public_key(data: Union[bytes, str]) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, raw 32 bytes, or 64 hex digits."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    stripped = raw.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(stripped)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
            return key
        if len(raw) == 32:
            return Ed25519PublicKey.from_public_bytes(raw)
        if _HEX64.fullmatch(stripped.decode("ascii", "replace").lower()):
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(stripped.decode("ascii")))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None
    raise ValueError("not an Ed25519 public key (expected PEM, 32 raw bytes or 64 hex digits)")


def _signed_message(records: int, head: str) -> bytes:
    return _SIGNED_PREFIX + canonical_json({"head": head, "records": records}).encode("ascii")


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside ``path``, fsync, rename over it, fsync the directory: a crash leaves the old file or the new."""
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make directory entries durable (POSIX; best effort elsewhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _signed_head(path: Path, hashes: Mapping[int, str]) -> SignedHead:
    """The last segment's signed head (``ledger.sig`` checked with ``ledger.pub``), or LedgerError."""
    try:
        key = load_public_key(public_key_path(path).read_bytes())
        document = _loads_strict(signature_path(path).read_text(encoding="ascii"))
        records, head, signature = document["records"], document["head"], document["signature"]
        key.verify(bytes.fromhex(signature), _signed_message(records, head))
    except FileNotFoundError as exc:
        raise LedgerError(path, 0, f"cannot be continued: {Path(exc.filename).name} is missing (no signed head)") from None
    except InvalidSignature:
        raise LedgerError(path, 0, f"cannot be continued: {signature_path(path).name} does not verify with {public_key_path(path).name}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise LedgerError(path, 0, f"cannot be continued: its signed head is unreadable ({exc})") from None
    if hashes.get(records) != head:
        raise LedgerError(path, 0, f"cannot be continued: the signed head (record {records}, hash {str(head)[:16]}...) is not a line of the file")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SignedHead(records, head, key_fingerprint(key), raw.hex(), signature)


# ---------------------------------------------------------------------------- writer


class Ledger:
    """Append-only writer of one ledger file, its public key and its signed head.

    Args:
        path: the ledger file (created on the first append, with the public key file).
        signing_key: the run's Ed25519 key; default a fresh one, held in memory only.
            To continue an existing ledger, pass the key that started it.
    """

    def __init__(self, path: PathLike, signing_key: Optional[Ed25519PrivateKey] = None) -> None:
        self._path = Path(path)
        if signing_key is not None and not isinstance(signing_key, Ed25519PrivateKey):
            raise TypeError(f"signing_key must be an Ed25519PrivateKey, got {type(signing_key).__name__}")
        self._key = signing_key if signing_key is not None else Ed25519PrivateKey.generate()
        self._head: Optional[tuple[int, str]] = None  # (records, hash of the last line) once opened

    @property
    def path(self) -> Path:
        return self._path

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the public key: print it when the run starts, for auditors to pin."""
        return key_fingerprint(self.public_key)

    @property
    def records(self) -> int:
        """Number of lines written so far (0 before the first append; segment lines count)."""
        return self._head[0] if self._head else 0

    @classmethod
    def resume(cls, path: PathLike, signing_key: Optional[Ed25519PrivateKey] = None) -> "Ledger":
        """Continue the ledger at ``path`` in a new segment, signed by a fresh key.

        Checks the file (:func:`read_entries`) and its signed head (``ledger.sig`` must
        verify with ``ledger.pub`` and name a line of the file), then appends the segment
        line committing to that head and its key, fsyncs it, publishes the new key and
        signs the new head. Raises :class:`LedgerError` naming what stops the ledger from
        being continued (a damaged line, no or a bad signature).
        """
        path = Path(path)
        ledger = cls(path, signing_key)
        entries = read_entries(path)  # raises on any damage, a torn last line included
        links = sorted([*entries, *read_segments(path)], key=lambda e: e.seq)
        if not links:
            raise LedgerError(path, 0, "is empty: there is no segment to continue (start a fresh ledger)")
        previous = _signed_head(path, {link.seq: link.hash for link in links})
        segment = 2 + sum(1 for link in links if isinstance(link, SegmentEntry))
        ledger._head = (links[-1].seq, links[-1].hash)
        ledger._write_lines([_line_text(SegmentStart(segment, previous), links[-1].seq + 1, links[-1].hash, SEGMENT_FORMAT_VERSION)])
        pem = ledger.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        write_atomically(public_key_path(path), pem)
        ledger.sign()
        logger.info("ledger %s continues in segment %d, key %s (previous %s)", path, segment, ledger.fingerprint, previous.fingerprint)
        return ledger

    def append(self, records: Sequence[LedgerRecord]) -> None:
        """Append ``records`` (one round's worth), fsync, then sign the new head.

        The lines go out in one write in append mode and are fsynced before the
        signature is replaced, so a crash loses at most this batch and never leaves a
        signature over records that are not on disk. Refuses to append after a
        truncated last line (which would fuse two records).
        """
        records = list(records)
        for index, record in enumerate(records):
            if not isinstance(record, LedgerRecord):
                raise TypeError(f"records[{index}] must be a LedgerRecord, got {type(record).__name__}")
        if not records:
            return
        created = self._open()
        seq, prev = self._head
        lines = []
        for record in records:
            seq += 1
            lines.append(_line_text(record, seq, prev, LEDGER_FORMAT_VERSION))
            prev = _sha256(lines[-1])
        self._write_lines(lines, created)
        self.sign()
        logger.debug("appended %d ledger record(s) to %s; head %d %s", len(records), self._path, seq, prev)

    def _write_lines(self, lines: Sequence[str], created: bool = False) -> None:
        """Append canonical lines chained from the head in one write, fsync, advance the head."""
        with open(self._path, "ab") as handle:
            handle.write("".join(line + "\n" for line in lines).encode("ascii"))
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            fsync_directory(self._path.parent)
        self._head = (self._head[0] + len(lines), _sha256(lines[-1]))

    def sign(self) -> None:
        """Sign the current head and replace the signature file (each append does; call at run end too)."""
        self._open()
        records, head = self._head
        signature = self._key.sign(_signed_message(records, head))
        document = {
            "algorithm": "Ed25519",
            "fingerprint": self.fingerprint,
            "format": SIGNATURE_FORMAT,
            "head": head,
            "records": records,
            "signature": signature.hex(),
        }
        write_atomically(signature_path(self._path), (canonical_json(document) + "\n").encode("ascii"))

    def _open(self) -> bool:
        """Learn the head (continuing an existing ledger) or publish the key; True if the file is new."""
        if self._head is not None:
            self._check_terminated()
            return False
        pem = self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        key_file = public_key_path(self._path)
        if self._path.exists() and self._path.stat().st_size > 0:
            self._check_terminated()
            if not key_file.is_file() or key_file.read_bytes() != pem:
                raise LedgerError(
                    self._path, 0,
                    f"was started with another key than this Ledger's (fingerprint {self.fingerprint}); "
                    "pass the run's signing_key to continue it",
                )
            entries = read_entries(self._path)
            self._head = (entries[-1].seq, entries[-1].hash)
            return False
        write_atomically(key_file, pem)
        self._head = (0, GENESIS)
        return not self._path.exists()

    def _check_terminated(self) -> None:
        with open(self._path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                raise LedgerError(self._path, 0, "last line is truncated (no trailing newline); refusing to append")


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LedgerProblem:
    """One thing wrong with a ledger, located by line and record number where known."""

    message: str
    line: Optional[int] = None
    record: Optional[int] = None

    def __str__(self) -> str:
        where = []
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.line is not None:
            where.append(f"line {self.line}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class _LineError(ValueError):
    """What is wrong with one line, with the record number it claims where readable."""

    def __init__(self, message: str, record: Optional[int] = None) -> None:
        super().__init__(message)
        self.record = record


def _check_format_version(data: dict[str, Any]) -> Optional[int]:
    """Pop and check ``format_version``: None if absent (read as version 1), else the version.

    Raises _LineError for a version this reader does not know, naming the value found
    and the versions known (and the record number the line claims, if readable).
    """
    if "kind" in data:  # a segment line: one layout, one version
        version = data.pop(_VERSION_FIELD, None)
        if isinstance(version, bool) or version != SEGMENT_FORMAT_VERSION:
            raise _LineError(
                f"a segment line (kind) must have format_version {SEGMENT_FORMAT_VERSION}, got {version!r}: "
                "written by a newer fedsim? upgrade fedsim to read it"
            )
        return version
    if _VERSION_FIELD not in data:
        return None
    version = data.pop(_VERSION_FIELD)
    if not isinstance(version, bool) and isinstance(version, int) and version in LEDGER_FORMAT_VERSIONS:
        return version
    seq = data.get("seq")
    record = seq if not isinstance(seq, bool) and isinstance(seq, int) and seq >= 1 else None
    known = ", ".join(str(v) for v in LEDGER_FORMAT_VERSIONS)
    if isinstance(version, bool) or not isinstance(version, int):
        found = f"{version!r} ({type(version).__name__}), not an integer"
    else:
        found = f"{version!r}"
    raise _LineError(
        f"format_version {found}: this reader knows version(s) {known} (and lines without the field, "
        "read as version 1); written by a newer fedsim? upgrade fedsim to read it",
        record=record,
    )


def _parse_line(raw: bytes) -> tuple[int, str, Union[LedgerRecord, SegmentStart]]:
    """(seq, prev, record or segment start) of one line, or ValueError with what is wrong.

    A line without ``format_version`` is read as version 1 (and must be canonical
    without the field); any version outside :data:`LEDGER_FORMAT_VERSIONS` is refused;
    a segment line (``kind``) must be version 2.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not ASCII JSON ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ValueError("empty line")
    data = _loads_strict(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    # Before anything else: another layout's fields would only give misleading errors.
    version = _check_format_version(data)
    missing = [f for f in _CHAIN_FIELDS if f not in data]
    if missing:
        raise ValueError(f"missing chain field(s) {missing}: not a hash-chained fedsim ledger")
    seq, prev = data.pop("seq"), data.pop("prev")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"seq must be an integer >= 1, got {seq!r}")
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise ValueError(f"prev must be 64 lowercase hex digits, got {prev!r}")
    if "kind" in data:
        record: Union[LedgerRecord, SegmentStart] = SegmentStart.from_dict(data)
    else:
        record = LedgerRecord.from_dict(data)
    if _line_text(record, seq, prev, version) != text:
        raise ValueError("not in canonical form (sorted keys, no spaces, shortest numbers): edited by hand?")
    return seq, prev, record


def _scan(data: bytes) -> tuple[list[LedgerEntry], list[SegmentEntry], list[LedgerProblem]]:
    """Every readable record, every segment line and every problem of a ledger's bytes (nothing raised)."""
    entries: list[LedgerEntry] = []
    segments: list[SegmentEntry] = []
    problems: list[LedgerProblem] = []
    if not data:
        return entries, segments, problems
    lines = data.split(b"\n")
    terminated = lines[-1] == b""
    if terminated:
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if number == len(lines) and not terminated:
            problems.append(LedgerProblem("truncated (no trailing newline): an incomplete write", line=number))
            continue
        try:
            seq, prev, record = _parse_line(raw)
        except ValueError as exc:
            problems.append(LedgerProblem(str(exc), line=number, record=getattr(exc, "record", None)))
            continue
        digest = _sha256(raw.decode("ascii"))
        if isinstance(record, SegmentStart):
            segments.append(SegmentEntry(seq, prev, digest, number, record))
        else:
            entries.append(LedgerEntry(seq, prev, digest, number, record))
    links = sorted([*entries, *segments], key=lambda e: e.line)
    problems.extend(_sequence_problems(links))
    problems.extend(_chain_problems(links))
    problems.extend(_round_problems(entries))
    problems.extend(_segment_problems(links, segments))
    # By line; problems with no line of their own (a deleted record) after those with one.
    return entries, segments, sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.record or 0))


def _sequence_problems(entries: Sequence[Union[LedgerEntry, SegmentEntry]]) -> list[LedgerProblem]:
    """Deleted, duplicated, swapped or moved records, from the ``seq`` numbers."""
    problems = []
    seen: dict[int, int] = {}
    swapped: set[int] = set()
    for before, after in zip(entries, entries[1:]):
        if after.seq == before.seq - 1 and after.line == before.line + 1:
            problems.append(LedgerProblem(
                f"records {after.seq} and {before.seq} are swapped (lines {before.line} and {after.line})",
                line=before.line,
            ))
            swapped.update((before.line, after.line))
        elif after.seq <= before.seq and after.line not in swapped:
            problems.append(LedgerProblem(
                f"out of order: comes after record {before.seq} (line {before.line})", line=after.line, record=after.seq,
            ))
    for entry in entries:
        if entry.seq in seen:
            problems.append(LedgerProblem(f"duplicate of line {seen[entry.seq]}", line=entry.line, record=entry.seq))
        seen.setdefault(entry.seq, entry.line)
    highest = max(seen, default=0)
    for missing in sorted(set(range(1, highest + 1)) - set(seen)):
        after = next((e for e in entries if e.seq > missing), None)
        where = f": line {after.line} holds record {after.seq} where it belongs" if after is not None else ""
        problems.append(LedgerProblem(f"missing (deleted from the ledger){where}", record=missing))
    return problems


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


def _chain_problems(entries: Sequence[Union[LedgerEntry, SegmentEntry]]) -> list[LedgerProblem]:
    """Records whose content changed after the next record was chained to them."""
    problems = []
    by_seq = {entry.seq: entry for entry in entries}
    for entry in entries:
        if entry.seq == 1:
            if entry.prev != GENESIS:
                problems.append(LedgerProblem("record 1 must be chained to the genesis hash", line=entry.line, record=1))
            continue
        before = by_seq.get(entry.seq - 1)
        if before is not None and entry.prev != before.hash:
            problems.append(LedgerProblem(
                f"changed after it was written: it hashes to {before.hash[:16]}..., but record {entry.seq} "
                f"(line {entry.line}) was chained to {entry.prev[:16]}...",
                line=before.line, record=before.seq,
            ))
    return problems


def _round_problems(entries: Sequence[LedgerEntry]) -> list[LedgerProblem]:
    problems = []
    for before, after in zip(entries, entries[1:]):
        if after.record.round < before.record.round:
            problems.append(LedgerProblem(
                f"round {after.record.round} follows round {before.record.round}; rounds must not decrease",
                line=after.line, record=after.seq,
            ))
    return problems


def _segment_problems(links: Sequence[Union[LedgerEntry, SegmentEntry]], segments: Sequence[SegmentEntry]) -> list[LedgerProblem]:
    """Segment lines out of turn, or whose copy of the previous segment's signed head does not hold."""
    problems = []
    by_seq = {link.seq: link for link in links}
    starts = [1, *(segment.seq for segment in segments)]
    for index, segment in enumerate(segments, start=2):
        where = {"line": segment.line, "record": segment.seq}
        if segment.start.segment != index:
            problems.append(LedgerProblem(
                f"the segment line says segment {segment.start.segment}, but it begins segment {index} of the file: "
                "a segment was removed, added or moved", **where,
            ))
        previous = segment.start.previous
        wrong = previous.problem()
        if wrong is not None:
            problems.append(LedgerProblem(wrong, **where))
        signed = by_seq.get(previous.records)
        if not starts[index - 2] <= previous.records < segment.seq:
            problems.append(LedgerProblem(
                f"commits to the signed head at record {previous.records}, which is not a line of segment {index - 1} "
                f"(records {starts[index - 2]}..{segment.seq - 1})", **where,
            ))
        elif signed is not None and signed.hash != previous.head:
            problems.append(LedgerProblem(
                f"commits to segment {index - 1}'s signed head {previous.head[:16]}... at record {previous.records}, "
                f"but that record hashes to {signed.hash[:16]}...: changed after segment {index - 1} signed it", **where,
            ))
    return problems


def read_segments(path: PathLike) -> list[SegmentEntry]:
    """The segment lines of the ledger at ``path`` (none for a ledger never resumed); see :func:`read_entries`."""
    with open(path, "rb") as handle:
        _, segments, problems = _scan(handle.read())
    if problems:
        _raise_first(path, problems)
    return segments


def _raise_first(path: PathLike, problems: Sequence[LedgerProblem]) -> None:
    first = problems[0]
    message = first.message if first.record is None else f"record {first.record}: {first.message}"
    raise LedgerError(path, first.line or 0, message)


def read_entries(path: PathLike) -> list[LedgerEntry]:
    """Every entry of the ledger at ``path`` after checking lines, numbering and chain.

    The signature is not checked here (a running server signs just after each
    append; use :func:`audit_ledger` for that).

    Lines without ``format_version`` (written before versions existed) are read as
    version 1; a line of any version outside :data:`LEDGER_FORMAT_VERSIONS` is refused.

    Raises:
        LedgerError: naming the line of the first problem: not ASCII / JSON / a
            valid record, a ``format_version`` this reader does not know (naming
            the value and the versions known), not canonical, a last line without its newline (a torn
            write), a record missing, duplicated or out of order, a broken chain, or
            a round lower than the line before.
    """
    with open(path, "rb") as handle:
        entries, _, problems = _scan(handle.read())
    if problems:
        _raise_first(path, problems)
    return entries


def read_ledger(path: PathLike) -> list[LedgerRecord]:
    """All records of the ledger at ``path``, in file order (see :func:`read_entries`).

    Lines without ``format_version`` (ledgers written before versions existed) are
    read as version 1; an unknown version raises :class:`LedgerError`.
    """
    return [entry.record for entry in read_entries(path)]


# ----------------------------------------------------------------------------- auditing


@dataclass(frozen=True)
class SegmentAudit:
    """One segment as :func:`audit_ledger` checked it: its lines, its key and the pin."""

    segment: int  # 1, 2, ...
    first: int  # seq of its first line (its segment line from segment 2 on)
    last: int  # seq of its last line
    fingerprint: Optional[str]  # of the key its signed head was checked against (None: unknown)
    pinned: Optional[str]  # the fingerprint the auditor pinned for it (None: not pinned)

    def describe(self) -> str:
        return f"segment {self.segment} ({_span(self.first, self.last)})"


@dataclass(frozen=True)
class LedgerAudit:
    """What :func:`audit_ledger` found: the readable records, the segments and every problem."""

    path: Path
    entries: tuple[LedgerEntry, ...]
    problems: tuple[LedgerProblem, ...]
    fingerprint: Optional[str]  # of the key the last segment's signature was checked against
    signed_records: Optional[int]  # lines covered by the last segment's valid signature
    segments: tuple[SegmentAudit, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def records(self) -> list[LedgerRecord]:
        return [entry.record for entry in self.entries]


def audit_ledger(
    path: PathLike,
    *,
    public_key: Optional[Union[Ed25519PublicKey, bytes, str]] = None,
    fingerprint: Optional[str] = None,
    fingerprints: Optional[Sequence[str]] = None,
) -> LedgerAudit:
    """Check a ledger's lines, numbering, chain, segments and signed heads; never raises on tampering.

    Lines are read as :func:`read_entries` reads them (no ``format_version``: version
    1); a line of an unknown ``format_version`` is a problem naming its line, record,
    the value found and the versions known. Each segment is checked against its own key:
    segment k's is in segment line k+1 (which also carries its signed head), the last
    segment's is ``ledger.pub`` (its head in ``ledger.sig``).

    Args:
        path: the ledger file (``ledger.pub`` and ``ledger.sig`` beside it).
        public_key: pin the last segment's key (PEM, raw, hex or key object): the
            signature must verify with it, and ``ledger.pub`` must be it.
        fingerprint: pin the key's SHA-256 fingerprint instead (as printed at run start);
            the same as ``fingerprints=[fingerprint]``.
        fingerprints: one fingerprint per segment, in order (one per run that wrote it):
            a segment signed by another key, a pinned segment the file lacks, and a
            segment nobody pinned are each a problem naming the segment.

    Raises:
        FileNotFoundError: no ledger at ``path``.
        ValueError: ``public_key`` or a fingerprint is malformed, or the last pin is not ``public_key``.
    """
    path = Path(path)
    pinned_key = public_key if isinstance(public_key, Ed25519PublicKey) or public_key is None else load_public_key(public_key)
    if fingerprint is not None and fingerprints is not None:
        raise ValueError("give fingerprint or fingerprints, not both")
    pins = [normalize_fingerprint(f) for f in ([fingerprint] if fingerprint is not None else fingerprints or [])]
    if pinned_key is not None and pins and pins[-1] != key_fingerprint(pinned_key):
        raise ValueError(f"fingerprint {pins[-1]} does not match the pinned public key ({key_fingerprint(pinned_key)})")
    entries, segment_lines, problems = _scan(path.read_bytes())
    links = sorted([*entries, *segment_lines], key=lambda e: e.seq)
    last_seq = max((link.seq for link in links), default=0)
    starts = [1, *(s.seq for s in segment_lines)]
    keys = [s.start.previous.fingerprint for s in segment_lines]  # segments 1..n-1
    count = len(starts)
    last_pin = pins[count - 1] if len(pins) >= count else (key_fingerprint(pinned_key) if pinned_key is not None else None)

    key, key_problems = _verification_key(path, pinned_key, last_pin)
    problems.extend(key_problems)
    signed = None
    if key is not None:
        signed, signature_problems = _check_signature(path, key, links)
        problems.extend(signature_problems)
        if signed is not None and count > 1 and signed < starts[-1]:
            problems.append(LedgerProblem(
                f"{signature_path(path).name} signs record {signed}, before segment {count} began (record {starts[-1]}): "
                f"segment {count} was never signed", record=starts[-1],
            ))
    fingerprints_found = [*keys, key_fingerprint(key) if key is not None else None]
    segments = tuple(
        SegmentAudit(index + 1, first, (starts[index + 1] - 1) if index + 1 < count else last_seq, fingerprints_found[index],
                     pins[index] if index < len(pins) else (last_pin if index == count - 1 else None))
        for index, first in enumerate(starts)
    )
    problems.extend(_pin_problems(segments, pins, path))
    return LedgerAudit(
        path=path,
        entries=tuple(entries),
        problems=tuple(problems),
        fingerprint=key_fingerprint(key) if key is not None else last_pin,
        signed_records=signed,
        segments=segments,
    )


def _pin_problems(segments: Sequence[SegmentAudit], pins: Sequence[str], path: Path) -> list[LedgerProblem]:
    """Each segment against its pin: foreign keys, pinned segments the file lacks, unpinned segments."""
    if not pins:
        return []
    problems = []
    for segment in segments[: len(pins)]:
        found = segment.fingerprint
        if segment.segment < len(segments) and found != segment.pinned:  # the last one: _verification_key
            problems.append(LedgerProblem(
                f"{segment.describe()} is signed with key {found}, not the pinned key {segment.pinned}: "
                "a foreign segment, or the fingerprints are not in the order the runs wrote them",
                record=segment.first,
            ))
    if len(pins) > len(segments):
        missing = ", ".join(f"segment {i + 1} (pinned {pin})" for i, pin in enumerate(pins) if i >= len(segments))
        problems.append(LedgerProblem(
            f"{len(pins)} fingerprints are pinned, but {path.name} holds {len(segments)} segment(s): {missing} missing "
            "(removed, or never written)",
        ))
    elif len(pins) < len(segments):
        unpinned = ", ".join(f"{s.describe()}, key {s.fingerprint}" for s in segments[len(pins):])
        problems.append(LedgerProblem(
            f"{len(pins)} fingerprint(s) pinned, but {path.name} holds {len(segments)} segments: not pinned: {unpinned}; "
            "pin every segment's fingerprint, in order", record=segments[len(pins)].first,
        ))
    return problems


def _verification_key(
    path: Path, pinned_key: Optional[Ed25519PublicKey], pinned: Optional[str]
) -> tuple[Optional[Ed25519PublicKey], list[LedgerProblem]]:
    """The key to check the signature with, and problems with the key file beside the ledger."""
    key_file = public_key_path(path)
    problems = []
    try:
        beside: Optional[Ed25519PublicKey] = load_public_key(key_file.read_bytes())
    except FileNotFoundError:
        beside = None
        problems.append(LedgerProblem(f"public key file {key_file.name} is missing"))
    except ValueError as exc:
        beside = None
        problems.append(LedgerProblem(f"public key file {key_file.name} is unreadable: {exc}"))
    if beside is not None and pinned is not None and key_fingerprint(beside) != pinned:
        problems.append(LedgerProblem(
            f"{key_file.name} holds key {key_fingerprint(beside)}, not the pinned key {pinned}: "
            "the ledger was re-signed with another key"
        ))
        beside = None
    return (pinned_key if pinned_key is not None else beside), problems


def _check_signature(
    path: Path, key: Ed25519PublicKey, entries: Sequence[LedgerEntry]
) -> tuple[Optional[int], list[LedgerProblem]]:
    """(records covered by a valid signature, problems) for the signature file beside ``path``."""
    sig_file = signature_path(path)
    try:
        document = _loads_strict(sig_file.read_text(encoding="ascii"))
        records, head, signature = document["records"], document["head"], bytes.fromhex(document["signature"])
        if isinstance(records, bool) or not isinstance(records, int) or not isinstance(head, str):
            raise ValueError("records must be an integer and head a string")
    except FileNotFoundError:
        return None, [LedgerProblem(f"signature file {sig_file.name} is missing: the head was never signed")]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return None, [LedgerProblem(f"signature file {sig_file.name} is unreadable: {exc}")]
    fp = key_fingerprint(key)
    try:
        key.verify(signature, _signed_message(records, head))
    except InvalidSignature:
        return None, [LedgerProblem(
            f"the signature over the head (record {records}, hash {head[:16]}...) does not verify with key {fp}: "
            "signed with another key, or the signature file was edited",
            record=records,
        )]
    problems = []
    last = max((entry.seq for entry in entries), default=0)
    by_seq = {entry.seq: entry for entry in entries}
    if records > last:
        problems.append(LedgerProblem(
            f"the signature covers {records} records but the ledger ends at record {last}: "
            f"{_span(last + 1, records)} removed (truncated)",
            record=last + 1,
        ))
    elif records in by_seq and by_seq[records].hash != head:
        problems.append(LedgerProblem(
            f"does not match the signed head (hash {head[:16]}..., now {by_seq[records].hash[:16]}...): "
            "this record or one before it was changed after signing",
            line=by_seq[records].line, record=records,
        ))
    if records < last:
        problems.append(LedgerProblem(
            f"{_span(records + 1, last)} after the signed head (record {records}): no signature covers them",
            record=records + 1,
        ))
    return records, problems
