"""Push a signed ticket to the connected devices and collect who installed it and who refused.

A rollout is one Flower run (ServerApp with run config `mode = "deploy"`): a "query" message to
every connected node carrying the bundle (wire schema: edge_daemon/ticket_install.py). Each
device verifies it against its own fleet key and answers installed or rejected-with-reason;
a node that does not answer before the timeout counts as offline. With a canary fraction,
a seeded sample goes first and the rest only if every canary device installed it. The outcome
is written atomically to `<run-dir>/deploy.json`, which `ticket deploy` prints as a table.
"""

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from ticket.atomic import atomic_write_text

BUNDLE_KEY = "bundle"
BUNDLE_ARRAY = "ticket"
BUNDLE_STYPE = "ticketfleet.bundle"
ACK_KEY = "ack"
INSTALLED = "installed"
REJECTED = "rejected"
OFFLINE = "offline"
SKIPPED = "skipped"  # not pushed: the canary did not install cleanly


@dataclass(frozen=True)
class Ack:
    node_id: int
    status: str  # installed, rejected, offline or skipped
    reason: str = ""
    canary: bool = False


@dataclass
class Rollout:
    ticket_id: str
    acks: list[Ack] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return bool(self.acks) and all(ack.status == INSTALLED for ack in self.acks)

    def to_json(self) -> dict[str, object]:
        return {
            "ticket_id": self.ticket_id,
            "succeeded": self.succeeded,
            "nodes": [asdict(ack) for ack in sorted(self.acks, key=lambda a: a.node_id)],
        }


def roll_out(
    grid: Grid,
    bundle: bytes,
    ticket_id: str,
    *,
    timeout: float,
    canary_fraction: float = 0.0,
    seed: int = 0,
) -> Rollout:
    """Push `bundle` to every connected node (canary first when `canary_fraction` > 0)."""
    if not 0.0 <= canary_fraction <= 1.0:
        raise ValueError(f"canary fraction must be in [0, 1], got {canary_fraction}")
    nodes = sorted(grid.get_node_ids())
    rollout = Rollout(ticket_id)
    if not nodes:
        return rollout
    canary: list[int] = []
    if canary_fraction > 0:
        size = max(1, math.ceil(canary_fraction * len(nodes)))
        canary = sorted(random.Random(f"ticketfleet.canary:{seed}").sample(nodes, size))
        rollout.acks += push(grid, bundle, ticket_id, canary, timeout=timeout, canary=True)
        if not rollout.succeeded:
            rest = [node for node in nodes if node not in canary]
            rollout.acks += [
                Ack(node, SKIPPED, "the canary did not install cleanly") for node in rest
            ]
            return rollout
    rest = [node for node in nodes if node not in canary]
    rollout.acks += push(grid, bundle, ticket_id, rest, timeout=timeout)
    return rollout


def push(
    grid: Grid,
    bundle: bytes,
    ticket_id: str,
    nodes: Sequence[int],
    *,
    timeout: float,
    canary: bool = False,
) -> list[Ack]:
    """One query round trip to `nodes`; an ack per node (offline for the silent ones)."""
    if not nodes:
        return []
    content = RecordDict(
        {
            BUNDLE_KEY: ArrayRecord(
                {
                    BUNDLE_ARRAY: Array(
                        dtype="uint8", shape=(len(bundle),), stype=BUNDLE_STYPE, data=bundle
                    )
                }
            ),
            "config": ConfigRecord({"ticket-id": ticket_id}),
        }
    )
    messages = [
        Message(content=content, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    acks = {node: Ack(node, OFFLINE, "no answer before the timeout", canary) for node in nodes}
    for reply in _replies_from(replies, nodes):
        node = reply.metadata.src_node_id
        acks[node] = _read_ack(reply, node, ticket_id, canary)
    return [acks[node] for node in nodes]


def write_outcome(rollout: Rollout, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "deploy.json"
    atomic_write_text(path, json.dumps(rollout.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def _replies_from(replies: Iterable[Message], nodes: Sequence[int]) -> Iterable[Message]:
    wanted = set(nodes)
    return (reply for reply in replies if reply.metadata.src_node_id in wanted)


def _read_ack(reply: Message, node: int, ticket_id: str, canary: bool) -> Ack:
    if reply.has_error():
        return Ack(node, REJECTED, f"error {reply.error.code}: {reply.error.reason}", canary)
    record = reply.content.config_records.get(ACK_KEY)
    status = None if record is None else record.get("status")
    if record is None or status not in (INSTALLED, REJECTED):
        return Ack(node, REJECTED, "the node's answer is not an acknowledgement", canary)
    reason = record.get("reason")
    text = reason if isinstance(reason, str) else ""
    if status == INSTALLED and record.get("ticket-id") != ticket_id:
        return Ack(node, REJECTED, "the node acknowledged another ticket", canary)
    return Ack(node, str(status), text, canary)
