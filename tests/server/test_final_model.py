"""After the last round every device holds the final aggregate; the silent ones get it later."""

import json
import random
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from edge_daemon import client_app
from edge_daemon.model_store import load_model
from edge_daemon.state import load_state
from flower_wire import from_flower, to_flower
from server.delivery_record import (
    FILE,
    DeliveryRecord,
    DeliveryRecordError,
    load_record,
    nodes_missing,
)
from server.final_model import deliver_final_model
from server.run_control import request_stop
from server.strategy import PackedFedAvg, RoundPlan
from server.training_run import run_resumable
from tests.inprocess import InProcessGrid, SilentNodeGrid, heart_nodes, server_identity
from ticket import wire
from ticket.bundle import Ticket
from ticket.packing import PackLayout
from ticket.train_config import TrainConfig
from ticket.wire import ModelAck, ModelPush


def _nodes(ticket_path: Path, root: Path) -> list[dict[str, bool | float | int | str]]:
    nodes = heart_nodes(ticket_path)
    for index, node in enumerate(nodes):
        node[wire.NODE_MODEL_PATH] = str(root / f"n{index}" / "latest.model")
        node[wire.NODE_STATE_PATH] = str(root / f"n{index}" / "state.json")
    return nodes


def _train(
    ticket: Ticket, grid: InProcessGrid, run_dir: Path, rounds: int
) -> list[tuple[int, np.ndarray]]:
    """One ServerApp: train to `rounds`, then deliver the final model as server_app.py does."""
    layout = PackLayout.from_ticket(ticket)
    plan = RoundPlan(ticket_id=ticket.content_id, train=TrainConfig(1, 32, 1e-3))
    finals: list[tuple[int, np.ndarray]] = []

    def on_final(server_round: int, values: np.ndarray) -> None:
        finals.append((server_round, values))
        deliver_final_model(
            grid,
            run_dir,
            ticket_id=ticket.content_id,
            layout=layout,
            values=values,
            server_round=server_round,
            timeout=1,  # how long a silent node is waited for
            poll_s=0.0,
        )

    random.seed(0)
    with server_identity():
        run_resumable(
            PackedFedAvg(layout, plan),
            grid,
            layout.pack(ticket.weights),
            run_dir=run_dir,
            num_rounds=rounds,
            timeout=60,
            on_final=on_final,
            plot=False,
        )
    return finals


def _push_weights(
    grid: InProcessGrid, ticket: Ticket, run_dir: Path, *, server_round: int
) -> DeliveryRecord:
    """Deliver the ticket's own weights as the final model of `server_round`."""
    layout = PackLayout.from_ticket(ticket)
    with server_identity():
        return deliver_final_model(
            grid,
            run_dir,
            ticket_id=ticket.content_id,
            layout=layout,
            values=layout.pack(ticket.weights),
            server_round=server_round,
            timeout=1,
            poll_s=0.0,
        )


def _pushes(grid: InProcessGrid) -> list[int]:
    return [m.metadata.dst_node_id for m in grid.sent if ModelPush.is_push(from_flower(m.content))]


def test_every_device_ends_a_run_holding_the_final_model(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = _nodes(ticket_path, tmp_path)
    grid = InProcessGrid(client_app.app, nodes)
    run_dir = tmp_path / "run"

    finals = _train(ticket, grid, run_dir, rounds=2)

    assert [r for r, _ in finals] == [2]
    final = finals[0][1]
    layout = PackLayout.from_ticket(ticket)
    for index in range(4):
        header, values = load_model(
            tmp_path / f"n{index}" / "latest.model", ticket_id=ticket.content_id, count=layout.size
        )
        np.testing.assert_array_equal(values, final)  # not the round-2 instruction's model
        assert (header.final, header.server_round, header.after_round) == (True, 2, 2)
        state = load_state(tmp_path / f"n{index}" / "state.json")
        assert state.bytes_received > 0 and state.rounds_joined == 2  # a push is not a round
    record = load_record(run_dir)
    assert record is not None
    assert sorted(record.kept) == [101, 102, 103, 104]
    assert (record.refused, record.silent) == ({}, [])
    assert nodes_missing(record, {101: None, 105: None}) == [105]


def test_a_silent_device_gets_it_at_the_next_delivery_and_no_one_twice(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = _nodes(ticket_path, tmp_path)
    run_dir = tmp_path / "run"
    silent = SilentNodeGrid(104, client_app.app, nodes)
    _train(ticket, silent, run_dir, rounds=1)
    record = load_record(run_dir)
    assert record is not None and record.silent == [104] and 104 not in record.kept

    # The service's delivery run: the same run, already at its last round, trains nothing.
    later = InProcessGrid(client_app.app, nodes)
    finals = _train(ticket, later, run_dir, rounds=1)

    assert [r for r, _ in finals] == [1]
    assert _pushes(later) == [104]
    assert not [m for m in later.sent if m.metadata.message_type == "train"]
    record = load_record(run_dir)
    assert record is not None and sorted(record.kept) == [101, 102, 103, 104]


def test_a_refusal_is_recorded_with_its_reason_and_not_asked_again(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = _nodes(ticket_path, tmp_path)
    del nodes[1][wire.NODE_MODEL_PATH]  # keeps no model
    run_dir = tmp_path / "run"
    _train(ticket, InProcessGrid(client_app.app, nodes), run_dir, rounds=1)
    record = load_record(run_dir)
    assert record is not None
    assert record.refused == {102: "this node keeps no model (node config model-path)"}

    again = InProcessGrid(client_app.app, nodes)
    _train(ticket, again, run_dir, rounds=1)
    assert _pushes(again) == []


def test_a_node_that_does_not_hold_the_ticket_refuses_by_name(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    nodes = _nodes(ticket_path, tmp_path)[:1]
    nodes[0][wire.NODE_TICKET_DIR] = str(tmp_path / "empty")
    del nodes[0][wire.NODE_TICKET_PATH]
    nodes[0][wire.NODE_FLEET_KEY] = str(ticket_path)  # never read: the ticket is missing first
    grid = InProcessGrid(client_app.app, nodes)
    record = _push_weights(grid, ticket, tmp_path, server_round=3)
    assert "is not cached on this device" in record.refused[101]


def test_an_answer_that_is_not_an_ack_is_a_reason_not_a_crash(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    def answers_badly(message: Message, context: Context) -> Message:
        return Message(message.content, reply_to=message)  # echoes the push back

    grid = InProcessGrid(answers_badly, _nodes(ticket_path, tmp_path)[:1])
    record = _push_weights(grid, ticket, tmp_path, server_round=1)
    assert "not an acknowledgement" in record.refused[101]


@pytest.mark.parametrize(
    ("push", "reason"),
    [
        (lambda t: ModelPush(t, 2, b"not a codec message"), "truncated"),
        (lambda t: ModelPush("b" * 64, 2, b"x"), "the run trains bbbbbbbbbbbb"),
    ],
)
def test_the_device_refuses_a_bad_push_and_keeps_nothing(
    ticket: Ticket, ticket_path: Path, tmp_path: Path, push: Any, reason: str
) -> None:
    node = _nodes(ticket_path, tmp_path)[0]
    with server_identity():
        message = Message(to_flower(push(ticket.content_id).to_record()), 101, "query")
    message.metadata.__dict__["_message_id"] = uuid4().hex
    context = Context(1, 101, node, RecordDict(), {})

    answer = ModelAck.from_record(from_flower(client_app.app(message, context).content))

    assert answer.status == wire.REJECTED and reason in answer.reason.lower()
    assert not (tmp_path / "n0" / "latest.model").exists()


def test_a_stopped_run_sends_no_final_model(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    request_stop(run_dir, "another ticket was deployed")
    grid = InProcessGrid(client_app.app, _nodes(ticket_path, tmp_path))

    assert _train(ticket, grid, run_dir, rounds=2) == []
    assert _pushes(grid) == [] and not (run_dir / FILE).exists()


def test_a_damaged_record_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / FILE).write_text("{not json")
    with pytest.raises(DeliveryRecordError, match=FILE):
        load_record(tmp_path)
    (tmp_path / FILE).write_text(json.dumps({"format": "x"}))
    with pytest.raises(DeliveryRecordError, match="expected an object"):
        load_record(tmp_path)
    (tmp_path / FILE).write_bytes(b"\xff\xfe")
    with pytest.raises(DeliveryRecordError, match="cannot read"):
        load_record(tmp_path)
    record = DeliveryRecord("a" * 64, 3, {101: "t"}, {102: "no"}, [103])
    assert DeliveryRecord.from_json(record.to_json(), tmp_path) == record


def test_a_damaged_record_is_rewritten_by_the_next_delivery(
    ticket: Ticket, ticket_path: Path, tmp_path: Path
) -> None:
    (tmp_path / FILE).write_text("{not json")
    grid = InProcessGrid(client_app.app, _nodes(ticket_path, tmp_path)[:1])

    record = _push_weights(grid, ticket, tmp_path, server_round=2)

    assert set(record.kept) == {101}
    assert load_record(tmp_path) == record
