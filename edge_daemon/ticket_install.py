"""A ticket pushed by `ticket deploy`: verify it against this device's fleet key, cache it, ack.

Messages are ticket/wire.py's: a "query" message holding an InstallPush, answered by an
InstallAck. A refusal (a malformed push included) is an answer, not an Error: the operator's
table must say why each device refused. The key that decides is the one in this device's own
configuration (node config `fleet-key`), never anything the message carries.
"""

from collections.abc import Mapping
from pathlib import Path

from flwr.app import Message

from flower_wire import from_flower
from flower_wire import reply as wire_reply
from ticket import wire
from ticket.wire import INSTALLED, REJECTED, AckStatus, InstallAck, InstallPush, WireError

ConfigValue = bool | float | int | str


def is_install(message: Message) -> bool:
    return InstallPush.is_push(from_flower(message.content))


def install(message: Message, node_config: Mapping[str, ConfigValue]) -> Message:
    """Verify and cache the pushed ticket; reply with an ack saying installed or why not."""
    from edge_daemon.ticket_cache import TicketCache, TicketCacheError

    try:
        push = InstallPush.from_record(from_flower(message.content))
    except WireError as error:
        return _ack(message, REJECTED, "", str(error))
    wanted = push.ticket_id
    try:
        tickets_dir, fleet_key = _cache_settings(node_config)
        content_id = TicketCache(tickets_dir, fleet_key).add(push.bundle)
        if wanted and content_id != wanted:
            # Stored under its own id, so nothing is mislabelled; but the rollout asked for
            # another ticket, and the operator must hear about it.
            raise InstallRefusedError(
                f"the bundle is ticket {content_id[:12]}, the rollout announced {wanted[:12]}"
            )
    except (InstallRefusedError, TicketCacheError) as error:
        return _ack(message, REJECTED, wanted, _reason(error))
    state_path = node_config.get(wire.NODE_STATE_PATH)
    if isinstance(state_path, str) and state_path:
        from edge_daemon.state import update_state

        update_state(Path(state_path), lambda state: state.with_ticket(content_id))
    return _ack(message, INSTALLED, content_id, "")


class InstallRefusedError(Exception):
    """The push is malformed, or this node has no ticket cache to put it in."""


def _cache_settings(config: Mapping[str, ConfigValue]) -> tuple[Path, Path]:
    tickets_dir, fleet_key = config.get(wire.NODE_TICKET_DIR), config.get(wire.NODE_FLEET_KEY)
    if not isinstance(tickets_dir, str) or not tickets_dir:
        raise InstallRefusedError("this node has no ticket cache (node config ticket-dir)")
    if not isinstance(fleet_key, str) or not fleet_key:
        raise InstallRefusedError("this node trusts no fleet key (node config fleet-key)")
    return Path(tickets_dir), Path(fleet_key)


def _reason(error: Exception) -> str:
    # The cache names its own files in some messages; the server needs the why, not our paths.
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("/") and ": " in text else text


def _ack(message: Message, status: AckStatus, ticket_id: str, reason: str) -> Message:
    return wire_reply(message, InstallAck(status, ticket_id, reason).to_record())
