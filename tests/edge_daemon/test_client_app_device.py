"""The ClientApp as `edge-daemon` runs it: the ticket from the cache, the device's own readings,
rounds counted in the daemon's durable state."""

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from edge_daemon import client_app
from edge_daemon.readings import ReadingsStore
from edge_daemon.state import load_state
from loopback.devices import hospital_csv
from tests.edge_daemon.test_client_app import _error, _instruction, _number
from tests.inprocess import find_ticket
from ticket.bundle import read_ticket
from ticket.wire import ErrorCode


@pytest.fixture(scope="module")
def ticket_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return find_ticket(tmp_path_factory.mktemp("ticket") / "t.ticket", density=0.5)


def _device(tmp_path: Path, ticket: Path, *, readings: int | None = 40) -> dict[str, object]:
    tickets = tmp_path / "tickets"
    tickets.mkdir()
    content_id = read_ticket(ticket, allow_unsigned=True).content_id
    (tickets / f"{content_id}.ticket").write_bytes(ticket.read_bytes())
    database = tmp_path / "readings.sqlite3"
    if readings:
        with ReadingsStore(database) as store:
            csv_path = tmp_path / "hungary.csv"
            store.ingest_csv(hospital_csv("Hungary", csv_path, training_only=False, limit=readings))
    return {
        "ticket-dir": str(tickets),
        "allow-unsigned": True,
        "readings-db": str(database),
        "state-path": str(tmp_path / "state.json"),
    }


def test_a_device_trains_on_its_readings_and_counts_the_round(
    tmp_path: Path, ticket_path: Path
) -> None:
    ticket = read_ticket(ticket_path, allow_unsigned=True)
    context = Context(1, 101, _device(tmp_path, ticket_path), RecordDict(), {})  # type: ignore[arg-type]

    reply = client_app.app(_instruction(ticket, "train"), context)

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert _number(reply.content.metric_records["metrics"]["num-examples"]) == 32  # 40 - 40/5
    state = load_state(tmp_path / "state.json")
    assert state.rounds_joined == 1 and state.bytes_sent > 0
    assert state.last_metrics["train-loss"] > 0
    sent = _instruction(ticket, "train").content.array_records["arrays"]["packed"]
    assert state.bytes_received == len(sent.data)  # the codec bytes of the global values
    assert state.last_round is not None and state.last_round["ticket_id"] == ticket.content_id


def test_a_device_evaluates_on_its_held_out_readings(tmp_path: Path, ticket_path: Path) -> None:
    ticket = read_ticket(ticket_path, allow_unsigned=True)
    context = Context(1, 101, _device(tmp_path, ticket_path), RecordDict(), {})  # type: ignore[arg-type]

    reply = client_app.app(_instruction(ticket, "evaluate"), context)

    assert _number(reply.content.metric_records["metrics"]["num-examples"]) == 8
    assert not (tmp_path / "state.json").exists()  # evaluation is not a round joined


def test_a_device_without_readings_replies_with_an_error(tmp_path: Path, ticket_path: Path) -> None:
    ticket = read_ticket(ticket_path, allow_unsigned=True)
    context = Context(1, 101, _device(tmp_path, ticket_path, readings=None), RecordDict(), {})  # type: ignore[arg-type]

    code, reason = _error(client_app.app(_instruction(ticket, "train"), context))

    assert code == ErrorCode.LOCAL_DATA and "no readings on this device" in reason


def test_a_device_that_lacks_the_runs_ticket_says_so(tmp_path: Path, ticket_path: Path) -> None:
    ticket = read_ticket(ticket_path, allow_unsigned=True)
    node = _device(tmp_path, ticket_path)
    for cached in Path(str(node["ticket-dir"])).iterdir():
        cached.unlink()
    context = Context(1, 101, node, RecordDict(), {})  # type: ignore[arg-type]

    code, reason = _error(client_app.app(_instruction(ticket, "train"), context))

    assert code == ErrorCode.TICKET
    assert f"ticket {ticket.content_id[:12]} is not cached on this device" in reason


def test_ticket_path_and_ticket_dir_are_exclusive(tmp_path: Path, ticket_path: Path) -> None:
    ticket = read_ticket(ticket_path, allow_unsigned=True)
    node = {**_device(tmp_path, ticket_path), "ticket-path": str(ticket_path)}
    context = Context(1, 101, node, RecordDict(), {})  # type: ignore[arg-type]

    code, reason = _error(client_app.app(_instruction(ticket, "train"), context))

    assert code == ErrorCode.NODE_CONFIG and "exactly one of ticket-path and ticket-dir" in reason


def test_errors_never_quote_a_reading(tmp_path: Path, ticket_path: Path) -> None:
    ticket = read_ticket(ticket_path, allow_unsigned=True)
    node = _device(tmp_path, ticket_path)
    (tmp_path / "readings.sqlite3").write_bytes(b"not a database, cholesterol 233")
    context = Context(1, 101, node, RecordDict(), {})  # type: ignore[arg-type]

    code, reason = _error(client_app.app(_instruction(ticket, "train"), context))

    assert code == ErrorCode.LOCAL_DATA and "233" not in reason
