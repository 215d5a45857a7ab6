"""The thinnest Grid that hands messages to a ClientApp in this process: for unit tests only.

It relies on Flower internals (FLOWER.md): instruction messages read the sender's identity from
`TaskIdentity`, and message ids are normally set by the SuperLink, so both are set here by hand.
Messages are deep-copied both ways, so neither side can see the other's objects.
"""

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ClientCallable = Callable[[Message, Context], Message]
NodeConfig = dict[str, bool | float | int | str]


class InProcessGrid(Grid):
    """Nodes numbered from `first_node_id`, each with its own config and persistent context."""

    def __init__(
        self,
        client: ClientCallable,
        node_configs: Iterable[NodeConfig],
        *,
        run_id: int = 1,
        run_config: Mapping[str, bool | float | int | str] | None = None,
        first_node_id: int = 101,
    ) -> None:
        self.client = client
        self._run = Run.create_empty(run_id)
        self.contexts = {
            node_id: Context(run_id, node_id, dict(config), RecordDict(), dict(run_config or {}))
            for node_id, config in zip(itertools.count(first_node_id), node_configs)
        }
        self.sent: list[Message] = []  # every instruction, as delivered
        self.waiting: dict[str, Message] = {}  # pushed instruction id -> its reply, not pulled

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now; its reply waits for `pull_messages`."""
        ids = []
        for message in messages:
            delivered, reply = self._deliver(message)
            self.waiting[delivered.metadata.message_id] = reply
            ids.append(delivered.metadata.message_id)
        return ids

    def _deliver(self, message: Message) -> tuple[Message, Message]:
        """(the message as the node got it, with its id and recorded in `sent`; its reply)."""
        delivered = copy.deepcopy(message)
        # The SuperLink assigns message ids; Metadata has no public setter for it.
        delivered.metadata.__dict__["_message_id"] = uuid4().hex
        self.sent.append(delivered)
        return delivered, copy.deepcopy(self._call(delivered))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.waiting.pop(i) for i in list(message_ids) if i in self.waiting]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _call(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            return self.client(message, context)
        except Exception as error:  # what the real runtime turns into an Error reply
            reason = f"{type(error).__name__}: {error}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)


class SilentNodeGrid(InProcessGrid):
    """A grid on which one node never answers: what a round timeout returns without it."""

    def __init__(self, silent: int, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.silent = silent

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = super().pull_messages(message_ids)
        return [reply for reply in replies if reply.metadata.src_node_id != self.silent]


@contextmanager
def server_identity(run_id: int = 1) -> Iterator[None]:
    """Let the strategy build instruction messages outside a real ServerApp process."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def find_ticket(out: Path, *, density: float, sign_key: Path | None = None) -> Path:
    """A small real heart-uci ticket (found on Cleveland) through `ticket find`, in ~1-3 s."""
    from ticket_cli.cli import main  # tests only: the grid itself needs no ticket_cli code

    args = [
        "find",
        *("--model", "heart-mlp", "--data", "heart-uci", "--sites", "Cleveland"),
        *("--model-arg", "hidden=[16,8]", "--epochs", "2", "--controls", "none", "--quiet"),
        *("--target-density", str(density), "--out", str(out)),
        *(("--sign-key", str(sign_key)) if sign_key else ()),
    ]
    if main(args) != 0:
        raise RuntimeError(f"ticket find failed for {out.name}")
    return out


def signed_ticket(work: Path, *, density: float) -> tuple[Path, Path]:
    """`find_ticket` signed with a fresh fleet key in `work`: (the ticket, the public key)."""
    from ticket_cli.cli import main

    if main(["keygen", "--out", str(work / "fleet")]) != 0:
        raise RuntimeError(f"ticket keygen failed in {work}")
    ticket = find_ticket(work / "heart.ticket", density=density, sign_key=work / "fleet.key")
    return ticket, work / "fleet.pub"


def heart_nodes(ticket: Path, **extra: bool | float | int | str) -> list[NodeConfig]:
    """Node configs for the four heart-uci hospitals as four devices (natural partition)."""
    return [
        {
            "ticket-path": str(ticket),
            "allow-unsigned": True,
            "secagg-allow-uncertified": True,  # nobody enrolled: no certificates to check
            "dataset": "heart-uci",
            "partition": "natural",
            "partition-id": index,
            "num-partitions": 4,
            **extra,
        }
        for index in range(4)
    ]


class FakeClock:
    """Time that moves only when something sleeps: scripted reply times, no real waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-3)  # a zero sleep still moves on: no busy loop


Delay = Callable[[Message], float | None]  # seconds until its reply arrives; None: never


class ScheduledGrid(InProcessGrid):
    """Push/pull on a FakeClock: each instruction is answered by the ClientApp when pushed, and
    its reply becomes pullable `delay(instruction)` seconds later (None: never, a lost node)."""

    def __init__(self, clock: FakeClock, delay: Delay, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.clock, self.delay = clock, delay
        self._due: dict[str, tuple[float, Message]] = {}  # instruction id -> (arrival, reply)
        self.pulled: list[str] = []  # every id asked for, in order

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            delivered, reply = self._deliver(message)
            wait = self.delay(delivered)
            if wait is not None:
                self._due[delivered.metadata.message_id] = (self.clock.now + wait, reply)
            ids.append(delivered.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ready = []
        for message_id in message_ids:
            self.pulled.append(message_id)
            due = self._due.get(message_id)
            if due is not None and due[0] <= self.clock.now:
                ready.append(self._due.pop(message_id)[1])
        return ready

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's semantics on the fake clock: wait for every reply, up to `timeout`."""
        start = self.clock.now
        ids = list(self.push_messages(messages))
        arrivals = [self._due[i][0] for i in ids if i in self._due]
        lost = len(arrivals) < len(ids)
        end = math.inf if lost else max(arrivals, default=start)
        self.clock.now = min(end, start + (math.inf if timeout is None else timeout))
        return list(self.pull_messages(ids))
