"""After a run's last round, the fleet gets the model it trained.

A train instruction carries the global model *before* its round, so a device's last instruction
holds the aggregate of the round before the last; the final aggregate would stay on the server.
When a run reaches its last round the ServerApp pushes it (ticket/wire.py ModelPush, a "query"
message: float32 values over the ticket's mask, the ticket and the round) to every connected
node, and records in `<run-dir>/final-model.json` who kept it and why the others did not.

A device that was offline then gets it later: while idle, the service (server/service.py)
re-runs the finished run when a node that has not settled the final model is online; the re-run
trains no round, and this module sends the model to the nodes not yet settled only. A node that
*refused* it (no model store configured, a ticket it does not hold) is not asked again for the
same model: asking would get the same answer. The record is server/delivery_record.py.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from flwr.app import Message
from flwr.serverapp import Grid

from flower_wire import from_flower, to_flower
from server.broadcast import POLL_S, broadcast
from server.delivery_record import (
    DeliveryRecord,
    DeliveryRecordError,
    load_record,
    write_record,
)
from ticket.codec import Kind, encode_vector
from ticket.packing import PackLayout
from ticket.wire import KEPT, ModelAck, ModelPush, WireError

logger = logging.getLogger(__name__)


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
    try:
        record = load_record(run_dir)
    except DeliveryRecordError as error:
        # Only a delivery log: asking every node again costs a push each, and a device keeps
        # the same final model once. Refusing would fail the finished run on every retry.
        logger.warning("%s; rewriting it, every connected node is asked again", error)
        record = None
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


def _refusal(reply: Message) -> str | None:
    """None when the node kept the model, else its reason."""
    if reply.has_error():
        return f"error {reply.error.code}: {reply.error.reason}"
    try:
        ack = ModelAck.from_record(from_flower(reply.content))
    except WireError as error:
        return f"the node's answer is not an acknowledgement: {error}"
    return None if ack.status == KEPT else ack.reason or "refused without a reason"
