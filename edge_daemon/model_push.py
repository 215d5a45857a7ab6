"""The run's final model, pushed by the server after its last round: check it, keep it, ack.

A train instruction carries the global model *before* its round, so without this push a device
would end every run holding the aggregate of the round before the last. The push is a "query"
message holding a ModelPush (ticket/wire.py), answered by a ModelAck; a refusal is an answer,
not an Error, so the server's delivery record says why a device did not keep it. The values are
decoded against the device's own cached, verified ticket (its mask decides the length), never
against anything the message claims.
"""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import Message

from flower_wire import from_flower
from flower_wire import reply as wire_reply
from ticket import wire
from ticket.errors import TicketError
from ticket.wire import KEPT, REJECTED, ModelAck, ModelAckStatus, ModelPush

if TYPE_CHECKING:
    from ticket.bundle import Ticket

ConfigValue = bool | float | int | str
TicketReader = Callable[[str], "Ticket"]  # content id -> the cached ticket, verified


def is_model_push(message: Message) -> bool:
    return ModelPush.is_push(from_flower(message.content))


def keep_pushed_model(
    message: Message, node_config: Mapping[str, ConfigValue], read_ticket: TicketReader
) -> Message:
    """Decode the pushed values over the cached ticket's mask and keep them for `predict`.

    `read_ticket` raises for a ticket this device does not hold or does not trust; its message
    becomes the ack's reason.
    """
    from edge_daemon.model_store import save_model
    from ticket.packing import PackLayout

    try:
        push = ModelPush.from_record(from_flower(message.content))
    except TicketError as error:  # WireError: malformed
        return _ack(message, REJECTED, str(error))
    model_path = node_config.get(wire.NODE_MODEL_PATH)
    if not isinstance(model_path, str) or not model_path:
        return _ack(message, REJECTED, "this node keeps no model (node config model-path)")
    try:
        layout = PackLayout.from_ticket(read_ticket(push.ticket_id))
        values = layout.decode_model(
            push.payload, ticket_id=push.ticket_id, server_round=push.server_round
        )
    except (TicketError, OSError) as error:
        return _ack(message, REJECTED, str(error))
    try:
        save_model(
            Path(model_path),
            values,
            ticket_id=push.ticket_id,
            run_id=message.metadata.run_id,
            server_round=push.server_round,
            received_at=datetime.now(UTC),
            final=True,
        )
    except OSError as error:
        return _ack(message, REJECTED, f"cannot write the model: {error.strerror}")
    _count_received(node_config, len(push.payload))
    return _ack(message, KEPT, "")


def _count_received(node_config: Mapping[str, ConfigValue], size: int) -> None:
    state_path = node_config.get(wire.NODE_STATE_PATH)
    if isinstance(state_path, str) and state_path:
        from edge_daemon.state import update_state

        update_state(Path(state_path), lambda state: state.with_received(size))


def _ack(message: Message, status: ModelAckStatus, reason: str) -> Message:
    return wire_reply(message, ModelAck(status, reason).to_record())
