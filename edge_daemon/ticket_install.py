"""A ticket pushed by `ticket deploy`: verify it against this device's fleet key, cache it, ack.

Wire schema (must match server/rollout.py): a "query" message with ArrayRecord "bundle"
{"ticket": the .ticket bytes (stype "ticketfleet.bundle")} and ConfigRecord "config"
{"ticket-id": content id}; the reply is ConfigRecord "ack" {"status": "installed" or
"rejected", "ticket-id", "reason"}. A refusal is an answer, not an Error: the operator's table
must say why each device refused. The key that decides is the one in this device's own
configuration (node config `fleet-key`), never anything the message carries.
"""

from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict

BUNDLE_KEY = "bundle"
BUNDLE_ARRAY = "ticket"
BUNDLE_STYPE = "ticketfleet.bundle"
ACK_KEY = "ack"
INSTALLED = "installed"
REJECTED = "rejected"

ConfigValue = bool | float | int | str


def is_install(message: Message) -> bool:
    return BUNDLE_KEY in message.content.array_records


def install(message: Message, node_config: Mapping[str, ConfigValue]) -> Message:
    """Verify and cache the pushed ticket; reply with an ack saying installed or why not."""
    from edge_daemon.ticket_cache import TicketCache, TicketCacheError

    wanted = _wanted_id(message)
    try:
        tickets_dir, fleet_key = _cache_settings(node_config)
        bundle = message.content.array_records[BUNDLE_KEY].get(BUNDLE_ARRAY)
        if bundle is None or bundle.stype != BUNDLE_STYPE:
            raise InstallRefusedError(f"the message carries no {BUNDLE_ARRAY!r} bundle")
        content_id = TicketCache(tickets_dir, fleet_key).add(bytes(bundle.data))
        if wanted and content_id != wanted:
            # Stored under its own id, so nothing is mislabelled; but the rollout asked for
            # another ticket, and the operator must hear about it.
            raise InstallRefusedError(
                f"the bundle is ticket {content_id[:12]}, the rollout announced {wanted[:12]}"
            )
    except (InstallRefusedError, TicketCacheError) as error:
        return _ack(message, REJECTED, wanted, _reason(error))
    state_path = node_config.get("state-path")
    if isinstance(state_path, str) and state_path:
        from edge_daemon.state import update_state

        update_state(Path(state_path), lambda state: state.with_ticket(content_id))
    return _ack(message, INSTALLED, content_id, "")


class InstallRefusedError(Exception):
    """The push is malformed, or this node has no ticket cache to put it in."""


def _cache_settings(config: Mapping[str, ConfigValue]) -> tuple[Path, Path]:
    tickets_dir, fleet_key = config.get("ticket-dir"), config.get("fleet-key")
    if not isinstance(tickets_dir, str) or not tickets_dir:
        raise InstallRefusedError("this node has no ticket cache (node config ticket-dir)")
    if not isinstance(fleet_key, str) or not fleet_key:
        raise InstallRefusedError("this node trusts no fleet key (node config fleet-key)")
    return Path(tickets_dir), Path(fleet_key)


def _wanted_id(message: Message) -> str:
    config = message.content.config_records.get("config")
    value = None if config is None else config.get("ticket-id")
    return value if isinstance(value, str) else ""


def _reason(error: Exception) -> str:
    # The cache names its own files in some messages; the server needs the why, not our paths.
    text = str(error)
    return text.split(": ", 1)[1] if text.startswith("/") and ": " in text else text


def _ack(message: Message, status: str, ticket_id: str, reason: str) -> Message:
    record = ConfigRecord({"status": status, "ticket-id": ticket_id, "reason": reason})
    return Message(RecordDict({ACK_KEY: record}), reply_to=message)
