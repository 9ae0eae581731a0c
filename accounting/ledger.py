"""The privacy ledger: an append-only JSON-lines record of what each party went through.

One line per (round, client) release::

    {"round": 3, "client": 7, "mechanism": {"name": "poisson_subsampled_gaussian",
     "noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 50}, "delta": 1e-05}

Every reported figure must be recomputable from this file alone
(:mod:`accounting.budget`), so the reader is strict: a malformed, truncated or
out-of-order line is an error naming its line number, never skipped.
Records are written one round per :meth:`Ledger.append`, flushed and fsynced.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from .mechanisms import Mechanism, PoissonSubsampledGaussian, mechanism_from_dict

__all__ = ["LedgerError", "LedgerRecord", "Ledger", "read_ledger"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_FIELDS = ("round", "client", "mechanism", "delta")


class LedgerError(ValueError):
    """A ledger file that cannot be read back faithfully; ``line`` is 1-based (0 if n/a)."""

    def __init__(self, path: PathLike, line: int, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}, line {line}" if line else self.path
        super().__init__(f"{where}: {message}")


def _check_index(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"LedgerRecord.{field} must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LedgerRecord:
    """One release: ``client``'s data went through ``mechanism`` in ``round``.

    ``client`` is the party whose guarantee this record feeds (a client id for
    sample-level DP); ``delta`` is the target delta the run was configured for.
    """

    round: int
    client: int
    mechanism: Mechanism
    delta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "round", _check_index("round", self.round))
        object.__setattr__(self, "client", _check_index("client", self.client))
        if not isinstance(self.mechanism, PoissonSubsampledGaussian):
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
        """One compact JSON object, no newline; floats round-trip exactly."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LedgerRecord":
        """Inverse of :meth:`to_dict`; rejects missing or unknown fields."""
        if not isinstance(data, Mapping):
            raise ValueError(f"LedgerRecord: expected a JSON object, got {type(data).__name__}")
        missing = [f for f in _FIELDS if f not in data]
        unknown = sorted(set(data) - set(_FIELDS))
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
        """Parse one ledger line (a trailing newline is allowed)."""

        def _reject_constant(name: str) -> float:
            raise ValueError(f"non-finite number {name} is not allowed")

        def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [key for key, _ in pairs]
            duplicates = sorted({key for key in keys if keys.count(key) > 1})
            if duplicates:
                raise ValueError(f"duplicate field(s) {duplicates}")
            return dict(pairs)

        try:
            data = json.loads(line, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        return cls.from_dict(data)


class Ledger:
    """Append-only writer bound to one ledger file (created on first append)."""

    def __init__(self, path: PathLike) -> None:
        self._path = Path(path)

    @property
    def path(self) -> Path:
        return self._path

    def append(self, records: Sequence[LedgerRecord]) -> None:
        """Append ``records`` (one round's worth) as lines, then flush and ``os.fsync``.

        All lines go out in one write in append mode. Refuses to append after a
        truncated last line (which would fuse two records).
        """
        records = list(records)
        for index, record in enumerate(records):
            if not isinstance(record, LedgerRecord):
                raise TypeError(f"records[{index}] must be a LedgerRecord, got {type(record).__name__}")
        if not records:
            return
        payload = "".join(record.to_json() + "\n" for record in records).encode("utf-8")
        created = not self._path.exists()
        if not created:
            self._check_terminated()
        with open(self._path, "ab") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            _fsync_directory(self._path.parent)
        logger.debug("appended %d ledger record(s) to %s", len(records), self._path)

    def _check_terminated(self) -> None:
        with open(self._path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                raise LedgerError(self._path, 0, "last line is truncated (no trailing newline); refusing to append")


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable (POSIX; best effort elsewhere)."""
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


def read_ledger(path: PathLike) -> list[LedgerRecord]:
    """All records of the ledger at ``path``, in file order.

    Raises:
        LedgerError: naming the 1-based line number for a line that is not valid
            UTF-8 / JSON / a valid record, an empty line, a last line without its
            newline (a torn write), or a round number lower than the line before.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    records: list[LedgerRecord] = []
    if not data:
        return records
    lines = data.split(b"\n")
    terminated = lines[-1] == b""
    if terminated:
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if number == len(lines) and not terminated:
            raise LedgerError(path, number, "truncated (no trailing newline): incomplete write")
        if not raw.strip():
            raise LedgerError(path, number, "empty line")
        try:
            record = LedgerRecord.from_json(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LedgerError(path, number, f"not valid UTF-8 ({exc.reason})") from None
        except (ValueError, TypeError) as exc:
            raise LedgerError(path, number, str(exc)) from None
        if records and record.round < records[-1].round:
            raise LedgerError(
                path, number, f"round {record.round} follows round {records[-1].round}; rounds must not decrease"
            )
        records.append(record)
    return records
