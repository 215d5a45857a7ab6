"""A Flower Grid whose send_and_receive closes a round at its goal or deadline, not its last node.

Flower's `Grid.send_and_receive(messages, timeout)` pushes the messages and pulls until every
reply is in or the timeout passes. `DeadlineGrid` wraps any Grid and, for a call announced with
`expect(Expect(...))`, pushes (`push_messages`) and then pulls (`pull_messages`) until the first
of (server/round_policy.py's closings):

- "all": every message has its reply;
- "goal": `goal` error-free replies from the `counted` nodes are in;
- "deadline": `deadline_s` passed and the replies are enough (`minimum` error-free replies from
  the counted nodes, or the `enough` predicate of those nodes);
- "timeout": the call's timeout passed, whatever arrived.

The messages still unanswered when a call closes are kept as outstanding and pulled along with
every later call's; a reply to one is discarded and reported as a `LateReply` (the node, the
round and stage it was for) in the trip that drained it; an error in its place (the SuperLink
answers for a node gone offline, or a message expired) only ends the wait for it. An
outstanding message is forgotten `keep_s` after its call closed (the SuperLink expires it by
its TTL anyway). A call without an expectation that has no deadline and no goal, while nothing
is outstanding, is the inner grid's own send_and_receive, so goal 0 is exactly Flower's
behaviour. Every call is recorded as a `Trip` (how it closed, its wall time); the strategy
takes them with `take_trips()`. `progress` is told where each call stands (server/round_progress.py:
`fleet-server status` shows it): at its start, after every pull, and at its close.

The clock and sleep are injectable so tests script reply times without waiting.
"""

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from server.round_policy import CLOSED_ALL, CLOSED_DEADLINE, CLOSED_GOAL, CLOSED_TIMEOUT
from server.round_progress import RoundProgress

logger = logging.getLogger(__name__)

PULL_INTERVAL_S = 0.5  # between pulls; Flower's grpc grid waits 3 s, too coarse for deadlines


@dataclass(frozen=True)
class Expect:
    """When the next send_and_receive may close before every reply is in."""

    round: int  # run-wide: the round the messages are for (late replies name it)
    stage: str  # "train", "evaluate", a secure aggregation trip ("setup", "unmask")
    goal: int | None = None  # close at this many error-free counted replies; None: no goal
    minimum: int = 1  # after the deadline: close once this many error-free counted replies
    deadline_s: float | None = None  # None: no deadline (wait for all, up to the timeout)
    counted: frozenset[int] | None = None  # the nodes whose replies count; None: every node
    # After the deadline, instead of `minimum`: whether these error-free counted repliers do.
    enough: Callable[[frozenset[int]], bool] | None = None

    @property
    def plain(self) -> bool:
        return self.goal is None and self.deadline_s is None


@dataclass(frozen=True)
class LateReply:
    node: int
    round: int  # the round its message was for
    stage: str

    def to_json(self) -> dict[str, int | str]:
        return {"node": self.node, "round": self.round, "stage": self.stage}


@dataclass
class Trip:
    """One send_and_receive: how it closed, how long it took, what late replies it drained."""

    round: int
    stage: str
    closed: str  # round_policy.CLOSINGS
    wall_s: float
    sent: int
    replied: int
    late: list[LateReply] = field(default_factory=list)


@dataclass(frozen=True)
class _Outstanding:
    node: int
    round: int
    stage: str
    closed_at: float


class DeadlineGrid(Grid):
    """`inner` with send_and_receive closing at a goal or deadline (module docstring)."""

    def __init__(
        self,
        inner: Grid,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        pull_interval_s: float = PULL_INTERVAL_S,
        keep_s: float = 3600.0,
        progress: Callable[[RoundProgress], None] = lambda progress: None,
    ) -> None:
        self.inner = inner
        self._progress = progress  # told when a trip starts, on each reply, and at its close
        self._clock, self._sleep = clock, sleep
        self._interval, self._keep = pull_interval_s, keep_s
        self._next: Expect | None = None
        self._outstanding: dict[str, _Outstanding] = {}  # message id -> what it was
        self._trips: list[Trip] = []

    # ------------------------------------------------------------ the inner grid's

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    # ------------------------------------------------------------ rounds

    def report_to(self, progress: Callable[[RoundProgress], None]) -> None:
        """Tell `progress` where each call stands from now on."""
        self._progress = progress

    def expect(self, expectation: Expect) -> None:
        """How the next send_and_receive may close (used once)."""
        self._next = expectation

    def take_trips(self) -> list[Trip]:
        """The calls finished since the last take, in order."""
        trips, self._trips = self._trips, []
        return trips

    @property
    def outstanding(self) -> int:
        """Messages of closed calls still awaited (their replies will be discarded)."""
        return len(self._outstanding)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        expectation, self._next = self._next, None
        if expectation is None:
            expectation = Expect(round=0, stage="")
        messages = list(messages)
        start = self._clock()
        if expectation.plain and not self._outstanding:
            self._tell(expectation, start, len(messages), [], 0)
            replies = list(self.inner.send_and_receive(messages, timeout=timeout))
            answered = {reply.metadata.src_node_id for reply in replies}
            everyone = {message.metadata.dst_node_id for message in messages} <= answered
            closed = CLOSED_ALL if everyone else CLOSED_TIMEOUT
            usable = sum(not reply.has_error() for reply in replies)
            self._tell(expectation, start, len(messages), replies, usable, closed)
            self._record(expectation, closed, start, len(messages), replies, [])
            return replies
        return self._push_and_pull(messages, expectation, timeout, start)

    def _push_and_pull(
        self, messages: list[Message], expect: Expect, timeout: float | None, start: float
    ) -> list[Message]:
        pushed = list(self.inner.push_messages(messages)) if messages else []
        waiting: dict[str, int] = {  # message id -> its node; an unpushed message has no id
            message_id: message.metadata.dst_node_id
            for message_id, message in zip(pushed, messages, strict=False)
            if message_id
        }
        limit = math.inf if timeout is None else float(timeout)
        replies: list[Message] = []
        ok: set[int] = set()
        late: list[LateReply] = []
        while True:
            ids = [*waiting, *self._outstanding]
            pulled = list(self.inner.pull_messages(ids)) if ids else []
            for reply in pulled:
                reply_to = reply.metadata.reply_to_message_id
                if reply_to in waiting:
                    node = waiting.pop(reply_to)
                    replies.append(reply)
                    if not reply.has_error() and (expect.counted is None or node in expect.counted):
                        ok.add(node)
                elif reply_to in self._outstanding:
                    was = self._outstanding.pop(reply_to)
                    if reply.has_error():  # the SuperLink's "unavailable" (node gone, expired)
                        continue
                    late.append(LateReply(was.node, was.round, was.stage))
                    logger.info(
                        "round %d: discarded node %d's late %s reply for round %d",
                        expect.round,
                        was.node,
                        was.stage,
                        was.round,
                    )
            elapsed = self._clock() - start
            closed = self._closing(expect, waiting, frozenset(ok), elapsed, limit)
            self._tell(expect, start, len(messages), replies, len(ok), closed)
            if closed is not None:
                break
            self._sleep(max(0.0, min(self._interval, limit - elapsed)))
        now = self._clock()
        for message_id, node in waiting.items():
            self._outstanding[message_id] = _Outstanding(node, expect.round, expect.stage, now)
        self._outstanding = {
            message_id: was
            for message_id, was in self._outstanding.items()
            if now - was.closed_at <= self._keep
        }
        self._record(expect, closed, start, len(messages), replies, late)
        return replies

    def _tell(  # noqa: PLR0917
        self,
        expect: Expect,
        start: float,
        sent: int,
        replies: list[Message],
        usable: int,
        closed: str | None = None,
    ) -> None:
        try:
            self._progress(
                RoundProgress(
                    expect.round,
                    expect.stage,
                    sent,
                    len(replies),
                    usable,
                    round(self._clock() - start, 1),
                    expect.goal,
                    expect.deadline_s,
                    closed,
                )
            )
        except OSError as error:  # a full disk must not stop the round: status is a courtesy
            logger.warning("round %d: cannot write its progress: %s", expect.round, error)

    @staticmethod
    def _closing(
        expect: Expect, waiting: dict[str, int], ok: frozenset[int], elapsed: float, limit: float
    ) -> str | None:
        if not waiting:
            return CLOSED_ALL
        if expect.goal is not None and len(ok) >= expect.goal:
            return CLOSED_GOAL
        if expect.deadline_s is not None and elapsed >= expect.deadline_s:
            enough = expect.enough(ok) if expect.enough is not None else len(ok) >= expect.minimum
            if enough:
                return CLOSED_DEADLINE
        if elapsed >= limit:
            return CLOSED_TIMEOUT
        return None

    def _record(  # noqa: PLR0917
        self,
        expect: Expect,
        closed: str,
        start: float,
        sent: int,
        replies: list[Message],
        late: list[LateReply],
    ) -> None:
        wall = self._clock() - start
        self._trips.append(Trip(expect.round, expect.stage, closed, wall, sent, len(replies), late))
