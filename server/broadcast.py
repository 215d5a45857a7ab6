"""One message to many nodes, each answer handed on as it arrives (Grid push, then pulls).

`grid.send_and_receive` waits for the last node before returning anything; an operator watching
a rollout, or a final model going out to a fleet, wants each device's answer the moment it is
in, and a bounded wait for the silent ones. Used by the rollout (server/rollout.py) and the
final-model delivery (server/final_model.py).
"""

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

POLL_S = 1.0  # between pulls while answers are outstanding (Flower's send_and_receive: 3 s)
NOT_ACCEPTED = "the SuperLink did not accept the message"
NO_ANSWER = "no answer before the timeout"


@dataclass(frozen=True)
class Answer:
    node_id: int
    reply: Message | None  # None: never delivered, or silent until the timeout
    reason: str = ""  # why reply is None: NOT_ACCEPTED or NO_ANSWER

    @property
    def silent(self) -> bool:
        return self.reply is None and self.reason == NO_ANSWER


def broadcast(
    grid: Grid,
    content: RecordDict,
    nodes: Sequence[int],
    *,
    timeout: float,
    message_type: str = MessageType.QUERY,
    poll_s: float = POLL_S,
) -> Iterator[Answer]:
    """Send `content` to every node in `nodes`; yield one Answer per node, as each is known:
    refusals by the SuperLink first, replies as they are pulled, the silent ones last."""
    messages = [
        Message(content=content, dst_node_id=node, message_type=message_type) for node in nodes
    ]
    deadline = time.monotonic() + timeout
    pending: dict[str, int] = {}  # message id -> node
    # The SuperLink's ids come back in the messages' order; None for one it did not take.
    for node, message_id in zip(nodes, grid.push_messages(messages) if nodes else [], strict=True):
        if message_id:
            pending[message_id] = node
        else:
            yield Answer(node, None, NOT_ACCEPTED)
    while pending:
        for reply in grid.pull_messages(list(pending)):
            answered = reply.metadata.reply_to_message_id
            if answered in pending:  # a second reply to one message counts once
                yield Answer(pending.pop(answered), reply)
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        time.sleep(min(poll_s, left))
    for node in pending.values():
        yield Answer(node, None, NO_ANSWER)
