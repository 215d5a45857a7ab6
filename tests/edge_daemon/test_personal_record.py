"""personal.json: a strict, atomically written record of what the last personalisation found."""

import json
import stat
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_daemon.model_store import ModelHeader
from edge_daemon.personal_record import (
    BaseModel,
    PersonalRecord,
    PersonalRecordError,
    load_record,
    save_record,
)

TICKET_A, TICKET_B, SHA = "a" * 64, "b" * 64, "c" * 64
AT = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
RECORD = PersonalRecord(
    base=BaseModel(TICKET_A, run_id=7, server_round=3, final=True, sha256=SHA),
    layers="last",
    epochs=20,
    train_rows=240,
    held_out_rows=60,
    global_accuracy=0.7,
    global_loss=0.61,
    personal_accuracy=0.85,
    personal_loss=0.4,
    used=True,
    why="personal model used",
    personal_sha256="d" * 64,
    at=AT,
)


def _header(ticket: str = TICKET_A, sha: str = SHA, *, final: bool = True) -> ModelHeader:
    return ModelHeader(ticket, 7, 3, AT, count=10, sha256=sha, final=final)


def test_a_record_round_trips_through_its_file_written_0600(tmp_path: Path) -> None:
    path = tmp_path / "model" / "personal.json"

    save_record(path, RECORD)

    assert load_record(path) == RECORD
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left beside it
    assert json.loads(path.read_text())["base"]["final"] is True


def test_no_file_is_no_record(tmp_path: Path) -> None:
    assert load_record(tmp_path / "personal.json") is None


def _with(**changes: Any) -> dict[str, Any]:
    document = RECORD.to_json()
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            document[outer] = {**document[outer], inner: value}
        else:
            document[key] = value
    return document


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{not json", "not a personalisation record"),
        ("[]", "expected an object with exactly the keys"),
        (json.dumps(_with(version=2)), "version: this daemon reads 1, got 2"),
        (json.dumps(_with(format="other")), "format: expected"),
        (json.dumps(_with(**{"base.final": "yes"})), "base: expected {ticket_id, run_id"),
        (json.dumps(_with(**{"base.ticket_id": "xyz"})), "base: expected"),
        (json.dumps(_with(layers="first")), 'layers: expected "last" or "all"'),
        (json.dumps(_with(train_rows=-1)), "train_rows: expected a whole number >= 0"),
        (json.dumps(_with(global_accuracy="high")), "global_accuracy: expected a finite number"),
        (json.dumps(_with(personal_sha256=None)), "personal_sha256: expected 64 hex digits"),
        (json.dumps(_with(at="2026-12-03T09:00:00")), "at: expected an ISO 8601 time with a"),
    ],
)
def test_a_damaged_record_is_refused_naming_the_file_and_key(
    tmp_path: Path, document: str, expected: str
) -> None:
    path = tmp_path / "personal.json"
    path.write_text(document)

    with pytest.raises(PersonalRecordError) as caught:
        load_record(path)

    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)
    assert "run `edge-daemon personalise`" in str(caught.value)  # how to mend it
    assert path.read_text() == document  # nothing is deleted or rewritten by reading


def test_undecodable_bytes_are_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "personal.json"
    path.write_bytes(b"\xff\xfe\x00")

    with pytest.raises(PersonalRecordError, match="cannot read"):
        load_record(path)


def test_the_base_matches_only_the_very_global_model_of_the_same_ticket() -> None:
    base = RECORD.base

    assert base.is_base_of(_header())
    assert not base.is_base_of(None)
    assert not base.is_base_of(_header(sha="e" * 64))  # the next round's model
    # Another ticket's model, even with the same digest, is never one a personal model of this
    # ticket may stand in for: its values are packed over another mask.
    assert not base.is_base_of(_header(ticket=TICKET_B))


def test_the_base_is_described_by_the_rounds_aggregated_into_it() -> None:
    header = _header(final=False)  # round 3's instruction: the model after round 2

    assert BaseModel.of(header) == replace(RECORD.base, final=False)
    assert BaseModel.of(header).describe() == "the global model of run 7 (after round 2)"
    assert RECORD.base.describe() == "the final global model of run 7 (after round 3)"
    assert BaseModel.of(_header()).after_round == header.after_round + 1
