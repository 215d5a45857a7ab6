"""After a run's last round, the fleet gets the model it trained.

A train instruction carries the global model *before* its round, so a device's last instruction
holds the aggregate of the round before the last; the final aggregate would stay on the server.
When a run reaches its last round the ServerApp pushes it (ticket/wire.py ModelPush, a "query"
message: float32 values over the ticket's mask, the ticket and the round) to every connected
node, and records in `<run-dir>/final-model.json` who kept it and why the others did not.

A device that was offline then gets it later: the service (server/service.py) starts a short
delivery run (run config `mode = "deliver"`) when a node that has not kept the final model is
online, and this module sends the model to those nodes only. A node that *refused* it (no model
store configured, a ticket it does not hold) is not asked again for the same model: asking
would get the same answer. The record holds node ids, times and reasons only, no values.
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Message
from flwr.serverapp import Grid

from flower_wire import from_flower, to_flower
from server.broadcast import POLL_S, broadcast
from ticket.atomic import atomic_write_text
from ticket.codec import Kind, encode_vector
from ticket.packing import PackLayout
from ticket.wire import KEPT, ModelAck, ModelPush, WireError

FILE = "final-model.json"
FORMAT = "ticketfleet/final-model"
VERSION = 1


class DeliveryRecordError(Exception):
    """final-model.json exists but is not a record this version wrote (message names it)."""


@dataclass
class DeliveryRecord:
    """Who holds a run's final model: node id -> when it was kept, or why it was refused; the
    nodes that did not answer are absent from both and asked again at the next delivery."""

    ticket_id: str
    server_round: int
    kept: dict[int, str] = field(default_factory=dict)  # node id -> ISO time
    refused: dict[int, str] = field(default_factory=dict)  # node id -> the node's reason
    silent: list[int] = field(default_factory=list)  # asked last time, no answer

    def settled(self) -> set[int]:
        """Nodes never to ask again for this model."""
        return set(self.kept) | set(self.refused)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "ticket_id": self.ticket_id,
            "server_round": self.server_round,
            "kept": {str(node): at for node, at in sorted(self.kept.items())},
            "refused": {str(node): why for node, why in sorted(self.refused.items())},
            "silent": sorted(self.silent),
        }

    @classmethod
    def from_json(cls, data: object, path: Path) -> "DeliveryRecord":
        keys = {"format", "version", "ticket_id", "server_round", "kept", "refused", "silent"}
        if not isinstance(data, dict) or set(data) != keys:
            raise DeliveryRecordError(f"{path}: expected an object with the keys {sorted(keys)}")
        if (data["format"], data["version"]) != (FORMAT, VERSION):
            raise DeliveryRecordError(f"{path}: expected format {FORMAT!r} version {VERSION}")
        try:
            return cls(
                str(data["ticket_id"]),
                int(data["server_round"]),
                {int(node): str(at) for node, at in dict(data["kept"]).items()},
                {int(node): str(why) for node, why in dict(data["refused"]).items()},
                [int(node) for node in data["silent"]],
            )
        except (TypeError, ValueError) as error:
            raise DeliveryRecordError(f"{path}: {error}") from None


def load_record(run_dir: Path) -> DeliveryRecord | None:
    """The run's delivery record; None when no final model was pushed yet."""
    path = Path(run_dir) / FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise DeliveryRecordError(f"{path}: not JSON ({error})") from None
    return DeliveryRecord.from_json(data, path)


def deliver_final_model(
    grid: Grid,
    run_dir: Path,
    *,
    ticket_id: str,
    layout: PackLayout,
    values: npt.NDArray[np.float32],
    server_round: int,
    timeout: float,
    poll_s: float = POLL_S,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DeliveryRecord:
    """Push the model after `server_round` to every connected node that has not settled it
    (kept or refused), collect the acks, and write the record atomically."""
    record = load_record(run_dir)
    if record is None or (record.ticket_id, record.server_round) != (ticket_id, server_round):
        record = DeliveryRecord(ticket_id, server_round)  # a newer model: everyone again
    nodes = sorted(set(grid.get_node_ids()) - record.settled())
    payload = encode_vector(
        values,
        kind=Kind.MODEL,
        ticket_id=ticket_id,
        round=server_round,
        dtype="float32",
        segment_sizes=layout.segment_sizes,
    )
    content = to_flower(ModelPush(ticket_id, server_round, payload).to_record())
    record.silent = []
    for answer in broadcast(grid, content, nodes, timeout=timeout, poll_s=poll_s):
        node = answer.node_id
        if answer.reply is None:
            record.silent.append(node)
            continue
        reason = _refusal(answer.reply)
        if reason is None:
            record.kept[node] = now().isoformat()
            record.refused.pop(node, None)
        else:
            record.refused[node] = reason
    write_record(run_dir, record)
    return record


def write_record(run_dir: Path, record: DeliveryRecord) -> Path:
    path = Path(run_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def nodes_missing(record: DeliveryRecord | None, online: Mapping[int, object]) -> list[int]:
    """Online nodes that should still be sent the final model."""
    if record is None:
        return []
    return sorted(set(online) - record.settled())


def _refusal(reply: Message) -> str | None:
    """None when the node kept the model, else its reason."""
    if reply.has_error():
        return f"error {reply.error.code}: {reply.error.reason}"
    try:
        ack = ModelAck.from_record(from_flower(reply.content))
    except WireError as error:
        return f"the node's answer is not an acknowledgement: {error}"
    return None if ack.status == KEPT else ack.reason or "refused without a reason"
