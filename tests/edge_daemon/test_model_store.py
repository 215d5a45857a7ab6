"""The kept global model: a bounded, checked file that only the ticket it is packed over reads."""

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_daemon.model_store import (
    MAGIC,
    ModelOfAnotherTicketError,
    ModelStoreError,
    load_model,
    read_header,
    save_model,
)

TICKET_A, TICKET_B = "a" * 64, "b" * 64
AT = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def _save(
    path: Path, values: np.ndarray, *, ticket: str = TICKET_A, run: int = 7, rnd: int = 3
) -> bool:
    return save_model(path, values, ticket_id=ticket, run_id=run, server_round=rnd, received_at=AT)


def test_round_trip_keeps_values_and_what_they_are(tmp_path: Path) -> None:
    path = tmp_path / "model" / "latest.model"
    values = np.linspace(-1, 1, 10, dtype=np.float32)

    assert _save(path, values)
    header, loaded = load_model(path, ticket_id=TICKET_A, count=10)

    np.testing.assert_array_equal(loaded, values)
    assert (header.ticket_id, header.run_id, header.server_round) == (TICKET_A, 7, 3)
    assert header.received_at == AT and header.replaced_ticket_id is None
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left beside it


def test_an_older_round_of_the_same_run_does_not_replace_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "latest.model"
    assert _save(path, np.ones(4, np.float32), rnd=5)

    assert not _save(path, np.zeros(4, np.float32), rnd=4)
    assert _save(path, np.full(4, 2, np.float32), rnd=5)  # the same round again (evaluate)
    assert _save(path, np.full(4, 3, np.float32), run=8, rnd=1)  # a new run starts over

    header, values = load_model(path, ticket_id=TICKET_A, count=4)
    assert (header.run_id, header.server_round, float(values[0])) == (8, 1, 3.0)


def test_another_ticket_replaces_the_model_and_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "latest.model"
    _save(path, np.ones(4, np.float32), rnd=9)

    assert _save(path, np.ones(6, np.float32), ticket=TICKET_B, rnd=1)

    assert read_header(path).replaced_ticket_id == TICKET_A
    with pytest.raises(ModelOfAnotherTicketError, match="holds a model of ticket bbbbbbbbbbbb"):
        load_model(path, ticket_id=TICKET_A, count=4)


def test_a_size_that_does_not_fit_the_ticket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latest.model"
    _save(path, np.ones(4, np.float32))

    with pytest.raises(ModelStoreError, match="4 values, ticket aaaaaaaaaaaa keeps 5"):
        load_model(path, ticket_id=TICKET_A, count=5)


@pytest.mark.parametrize("cut", [1, 8, 20, 200])
def test_a_truncated_file_is_refused(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "latest.model"
    _save(path, np.ones(40, np.float32))
    path.write_bytes(path.read_bytes()[:-cut] if cut < 200 else path.read_bytes()[: cut // 10])

    with pytest.raises(ModelStoreError, match="move it aside"):
        load_model(path, ticket_id=TICKET_A, count=40)


def test_altered_values_or_header_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "latest.model"
    _save(path, np.ones(4, np.float32))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="truncated or altered"):
        load_model(path, ticket_id=TICKET_A, count=4)

    header = json.dumps({"format": "x"}).encode()
    path.write_bytes(MAGIC + len(header).to_bytes(4, "little") + header)
    with pytest.raises(ModelStoreError, match="bad header"):
        read_header(path)
    path.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelStoreError, match="not a stored model"):
        read_header(path)


def test_a_damaged_file_is_replaced_by_the_next_model(tmp_path: Path) -> None:
    path = tmp_path / "latest.model"
    path.write_bytes(b"garbage")

    assert _save(path, np.ones(3, np.float32))
    assert load_model(path, ticket_id=TICKET_A, count=3)[0].server_round == 3


def test_no_model_yet_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "latest.model", ticket_id=TICKET_A, count=3)
