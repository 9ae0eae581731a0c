"""Persisted formats of the accounting package: the ledger line's ``format_version``
and the stability of persisted mechanisms (names and fields never change)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import accounting
import accounting.ledger as ledger_module
from accounting import (
    LEDGER_FORMAT_VERSION,
    LEDGER_FORMAT_VERSIONS,
    ClientLevelGaussian,
    DistributedSkellam,
    Ledger,
    LedgerError,
    LedgerRecord,
    PoissonSubsampledGaussian,
    audit_ledger,
    mechanism_from_dict,
    read_ledger,
)

DELTA = 1e-5


def _records() -> list[list[LedgerRecord]]:
    """Three rounds, sample level and client level."""
    return [
        [
            LedgerRecord(0, 0, PoissonSubsampledGaussian(1.1, 0.01, 50), DELTA),
            LedgerRecord(0, 1, PoissonSubsampledGaussian(1.1, 0.01, 50), DELTA),
        ],
        [LedgerRecord(1, None, ClientLevelGaussian(0.8, 50, 1000, 1), DELTA)],
        [
            LedgerRecord(2, 0, PoissonSubsampledGaussian(1.5, 0.02, 40), DELTA),
            LedgerRecord(2, 1, PoissonSubsampledGaussian(1.5, 0.02, 40), DELTA),
        ],
    ]


def _write(path: Path, key: Ed25519PrivateKey) -> list[LedgerRecord]:
    ledger = Ledger(path, signing_key=key)
    for round_records in _records():
        ledger.append(round_records)
    return [record for round_records in _records() for record in round_records]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sign(path: Path, key: Ed25519PrivateKey, records: int, head: str) -> None:
    """Sign a head the way :meth:`Ledger.sign` does (without reading the ledger back)."""
    signature = key.sign(ledger_module._signed_message(records, head))
    document = {
        "algorithm": "Ed25519",
        "fingerprint": ledger_module.key_fingerprint(key.public_key()),
        "format": ledger_module.SIGNATURE_FORMAT,
        "head": head,
        "records": records,
        "signature": signature.hex(),
    }
    ledger_module.signature_path(path).write_text(ledger_module.canonical_json(document) + "\n")


def _rewrite(
    path: Path, key: Ed25519PrivateKey, edit: Callable[[int, dict[str, Any]], None]
) -> list[str]:
    """Apply ``edit(seq, line)`` to every line, re-chain and re-sign with the run's key:
    a consistent ledger whose only difference is the edit."""
    out = []
    prev = ledger_module.GENESIS
    for line in _lines(path):
        line["prev"] = prev
        edit(line["seq"], line)
        text = ledger_module.canonical_json(line)
        prev = ledger_module._sha256(text)
        out.append(text)
    path.write_text("".join(text + "\n" for text in out))
    _sign(path, key, len(out), prev)
    return out


def _drop_version(seq: int, line: dict[str, Any]) -> None:
    line.pop("format_version")


# ------------------------------------------------------------------------ writing


def test_every_written_line_carries_format_version_1(tmp_path: Path) -> None:
    assert LEDGER_FORMAT_VERSION == 1
    assert LEDGER_FORMAT_VERSIONS == (1,)
    assert accounting.LEDGER_FORMAT_VERSION is LEDGER_FORMAT_VERSION
    path = tmp_path / "ledger.jsonl"
    written = _write(path, Ed25519PrivateKey.generate())
    lines = _lines(path)
    assert len(lines) == len(written) == 5
    for line in lines:
        assert type(line["format_version"]) is int and line["format_version"] == 1
        assert sorted(line) == ["client", "delta", "format_version", "mechanism", "prev", "round", "seq"]
    # The field sits in the canonical line, the chain is over that line.
    raw = path.read_text().splitlines()
    assert all('"format_version":1,' in text for text in raw)
    assert lines[1]["prev"] == ledger_module._sha256(raw[0])
    assert read_ledger(path) == written


# ------------------------------------------------------------- lines without a version


def test_ledger_written_before_versions_existed_reads_as_version_1(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    written = _write(path, key)
    legacy = _rewrite(path, key, _drop_version)
    assert all("format_version" not in text for text in legacy)
    assert read_ledger(path) == written
    audit = audit_ledger(path, public_key=key.public_key())
    assert audit.ok, [str(p) for p in audit.problems]
    assert audit.signed_records == 5

    # Continuing it: new lines carry the version, old ones stay as written, all read.
    extra = LedgerRecord(3, 0, PoissonSubsampledGaussian(1.1, 0.01, 50), DELTA)
    Ledger(path, signing_key=key).append([extra])
    raw = path.read_text().splitlines()
    assert raw[:5] == legacy
    assert json.loads(raw[5])["format_version"] == 1
    assert read_ledger(path) == written + [extra]
    assert audit_ledger(path, public_key=key.public_key()).ok


def test_a_line_without_version_must_still_be_canonical(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)
    legacy = _rewrite(path, key, _drop_version)
    lines = list(legacy)
    lines[1] = lines[1].replace(",", ", ")
    path.write_text("".join(text + "\n" for text in lines))
    with pytest.raises(LedgerError, match=r"line 2\b.*canonical") as info:
        read_ledger(path)
    assert info.value.line == 2


# ---------------------------------------------------------------- unknown versions


@pytest.mark.parametrize(
    "version, shown",
    [
        (2, "format_version 2:"),
        (0, "format_version 0:"),
        ("1", "format_version '1' (str), not an integer"),
        (True, "format_version True (bool), not an integer"),  # True == 1 in Python
        (1.0, "format_version 1.0 (float), not an integer"),
        (None, "format_version None (NoneType), not an integer"),
    ],
)
def test_unknown_format_version_is_refused_naming_line_value_and_known_versions(
    tmp_path: Path, version: Any, shown: str
) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)

    def set_version(seq: int, line: dict[str, Any]) -> None:
        if seq == 2:
            line["format_version"] = version

    _rewrite(path, key, set_version)  # chained and signed: only the version is wrong
    with pytest.raises(LedgerError) as info:
        read_ledger(path)
    message = str(info.value)
    assert info.value.line == 2
    assert "line 2: record 2: " in message
    assert shown in message
    assert "knows version(s) 1" in message
    assert "newer fedsim? upgrade" in message

    audit = audit_ledger(path, public_key=key.public_key())
    assert not audit.ok
    (problem,) = [p for p in audit.problems if "format_version" in p.message]
    assert (problem.line, problem.record) == (2, 2)
    assert shown in problem.message and "knows version(s) 1" in problem.message
    assert str(problem).startswith("record 2, line 2: format_version")
    assert 2 not in [entry.seq for entry in audit.entries]  # never guessed at


def test_a_newer_version_is_refused_before_its_fields_are_interpreted(tmp_path: Path) -> None:
    """A version-2 line with a field this reader has never heard of: the error is about
    the version (what to do: upgrade), not about the unknown field."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)

    def newer(seq: int, line: dict[str, Any]) -> None:
        if seq == 1:
            line["format_version"] = 2
            line["epoch"] = 7

    _rewrite(path, key, newer)
    with pytest.raises(LedgerError, match=r"line 1: record 1: format_version 2:.*upgrade") as info:
        read_ledger(path)
    assert "epoch" not in str(info.value)


# --------------------------------------------------------------------- tampering


def _edit_line(path: Path, index: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit one line in place, keeping it canonical, without re-chaining or re-signing."""
    raw = path.read_text().splitlines()
    line = json.loads(raw[index])
    edit(line)
    raw[index] = ledger_module.canonical_json(line)
    path.write_text("".join(text + "\n" for text in raw))


def test_stripping_format_version_from_a_signed_ledger_is_caught(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)
    assert audit_ledger(path, public_key=key.public_key()).ok
    # A middle record: a canonical, readable legacy line, but the chain covers the field.
    _edit_line(path, 2, lambda line: line.pop("format_version"))
    audit = audit_ledger(path, public_key=key.public_key())
    assert not audit.ok
    assert any(
        p.record == 3 and p.line == 3 and "changed after it was written" in p.message for p in audit.problems
    ), [str(p) for p in audit.problems]


def test_stripping_format_version_from_the_last_line_breaks_the_signed_head(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)
    _edit_line(path, 4, lambda line: line.pop("format_version"))
    assert len(read_ledger(path)) == 5  # the chain alone cannot see an edit of the last line...
    audit = audit_ledger(path, public_key=key.public_key())
    assert not audit.ok  # ...the signature does
    assert any(p.record == 5 and "does not match the signed head" in p.message for p in audit.problems)


def test_editing_format_version_in_a_signed_ledger_is_caught(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)
    _edit_line(path, 1, lambda line: line.update(format_version=2))
    audit = audit_ledger(path, public_key=key.public_key())
    assert not audit.ok
    assert any(p.line == 2 and p.record == 2 and "format_version 2" in p.message for p in audit.problems)
    assert any(p.record == 2 and "missing" in p.message for p in audit.problems)


def test_rechained_legacy_ledger_signed_with_another_key_is_caught(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)
    forger = Ed25519PrivateKey.generate()
    _rewrite(path, forger, _drop_version)
    audit = audit_ledger(path, public_key=key.public_key())
    assert not audit.ok
    assert any("does not verify" in p.message for p in audit.problems)


# ---------------------------------------------------------------- mechanisms


_PSG = {"name": "poisson_subsampled_gaussian", "noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 50}
_CLG = {
    "name": "client_level_gaussian", "noise_multiplier": 0.8, "cohort_size": 50,
    "population": 1000, "steps": 1, "sampling": "poisson",
}
_DSK = {
    "name": "distributed_skellam", "mu": 15000.5, "l1_sensitivity": 2560.0, "l2_sensitivity": 160.25, "dim": 256,
    "cohort_size": 4, "population": 1000, "sampling": "fixed_size", "participants": [3, 17, 512], "steps": 1,
}


@pytest.mark.parametrize("data", [_PSG, _CLG, _DSK])
def test_mechanisms_round_trip_by_name_and_fields(data: dict[str, Any]) -> None:
    mechanism = mechanism_from_dict(dict(data))
    assert mechanism.to_dict() == data
    assert type(mechanism).from_dict(dict(data)) == mechanism


@pytest.mark.parametrize("name", ["poisson_subsampled_gaussian_v2", "gaussian", "", None, 3, ["x"]])
def test_mechanism_from_dict_refuses_an_unknown_name(name: Any) -> None:
    with pytest.raises(ValueError, match="mechanism.name must be one of") as info:
        mechanism_from_dict({**_PSG, "name": name})
    assert "client_level_gaussian" in str(info.value) and "poisson_subsampled_gaussian" in str(info.value)
    with pytest.raises(ValueError, match="mechanism.name must be one of"):
        mechanism_from_dict({key: value for key, value in _PSG.items() if key != "name"})


@pytest.mark.parametrize(
    "cls, data", [(PoissonSubsampledGaussian, _PSG), (ClientLevelGaussian, _CLG), (DistributedSkellam, _DSK)]
)
def test_class_from_dict_refuses_another_mechanisms_name(cls: type, data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\.name must be"):
        cls.from_dict({**data, "name": "renamed"})


@pytest.mark.parametrize("data", [_PSG, _CLG, _DSK])
def test_mechanism_from_dict_refuses_an_extra_field(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['clip_norm'\]"):
        mechanism_from_dict({**data, "clip_norm": 1.0})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['clip_norm'\]"):
        type(mechanism_from_dict(dict(data))).from_dict({**data, "clip_norm": 1.0})


@pytest.mark.parametrize(
    "data, field", [(_PSG, "steps"), (_CLG, "sampling"), (_CLG, "population"), (_DSK, "participants"), (_DSK, "mu")]
)
def test_mechanism_from_dict_refuses_a_missing_field(data: dict[str, Any], field: str) -> None:
    """Even ``sampling``, which the constructor defaults: a persisted field is never guessed."""
    with pytest.raises(ValueError, match=rf"missing field\(s\) \['{field}'\]"):
        mechanism_from_dict({key: value for key, value in data.items() if key != field})


def test_distributed_skellam_persists_its_name_fields_and_participants_exactly(tmp_path: Path) -> None:
    """Pinned: the ledger name, the field names and a line's exact text; participants
    come back as the same sorted tuple, through a signed ledger and its audit."""
    mechanism = mechanism_from_dict(dict(_DSK))
    assert DistributedSkellam.name == "distributed_skellam" and mechanism.participants == (3, 17, 512)
    assert sorted(mechanism.to_dict()) == sorted(_DSK)
    record = LedgerRecord(4, None, mechanism, DELTA)
    assert record.to_json() == (
        '{"client":null,"delta":1e-05,"mechanism":{"cohort_size":4,"dim":256,"l1_sensitivity":2560.0,'
        '"l2_sensitivity":160.25,"mu":15000.5,"name":"distributed_skellam","participants":[3,17,512],'
        '"population":1000,"sampling":"fixed_size","steps":1},"round":4}'
    )
    assert LedgerRecord.from_json(record.to_json()) == record
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    written = _write(path, key)
    Ledger(path, signing_key=key).append([record])
    assert read_ledger(path) == written + [record]
    audit = audit_ledger(path)
    assert not audit.problems and audit.records[-1] == record
    with pytest.raises(ValueError, match="client must be None"):
        LedgerRecord(4, 3, mechanism, DELTA)


@pytest.mark.parametrize(
    ("participants", "message"),
    [([17, 3], r"participants must be strictly increasing"), ([3, 3], r"participants must be strictly increasing"),
     ([], r"participants must name at least one client"), ([True], r"participants\[0\] must be a client id"),
     ([-1], r"participants\[0\] must be a client id"), ("3", r"participants must be a JSON list"),
     ([1, 2, 3, 4, 5], r"participants must name at most cohort_size=4 clients")],
)
def test_distributed_skellam_refuses_a_malformed_participants_list(participants: Any, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^DistributedSkellam\.{message}"):
        mechanism_from_dict({**_DSK, "participants": participants})


def test_ledger_line_with_an_unknown_mechanism_is_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "ledger.jsonl"
    _write(path, key)

    def rename(seq: int, line: dict[str, Any]) -> None:
        if seq == 3:
            line["mechanism"]["name"] = "client_level_gaussian_v2"

    _rewrite(path, key, rename)
    with pytest.raises(LedgerError, match=r"line 3\b.*mechanism.name must be one of.*client_level_gaussian_v2"):
        read_ledger(path)


# ------------------------------------------------------------------ documentation


def test_accounting_docstrings_cite_no_missing_files() -> None:
    source_dir = Path(accounting.__file__).parent
    sources = sorted(source_dir.glob("*.py"))
    assert sources
    for source in sources:
        text = source.read_text()
        for missing in ("DESIGN.md", "PAPERS.md"):
            assert missing not in text, f"{source.name} cites {missing}"


def test_mechanisms_docstring_states_the_stability_rule() -> None:
    import accounting.mechanisms as mechanisms_module

    doc = " ".join(mechanisms_module.__doc__.split())
    assert "never change once released" in doc
    assert "new name" in doc
    assert "refuse names they do not know" in doc
    assert "read as version 1" in " ".join(ledger_module.__doc__.split())
