"""FedAvg over a ticket's packed vector: only the mask's coordinates travel, as codec bytes.

The global model is an ArrayRecord {PAYLOAD_KEY: float32 [n]} (n = PackLayout.size). Messages
are ticket/wire.py's (TrainInstruction, TrainReply, EvaluateInstruction, EvaluateReply), the
values in them encoded by ticket.codec; which replies count is decided here, the mean is
ticket.fedavg's. Round numbers
are run-wide: `start(first_round=k)` continues a run after a restart (server/training_run.py).
Every reply is checked on its own, train and evaluate alike; a malformed one is counted with
its reason in the RoundRecord and left out, so one bad node never stops the run.

Round management (server/round_policy.py): with a round goal, a round samples ceil(goal x
overselect) nodes, weighted against those that keep failing, and closes at its goal or
reporting deadline through server/deadline_grid.py, which every message trip goes through;
replies that come after their round closed are discarded and counted (RoundRecord.late).
"""

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from flower_wire import from_flower, to_flower
from server.deadline_grid import DeadlineGrid, Expect, Trip
from server.round_policy import CLOSED_TIMEOUT, FailureHistory, RoundPolicy, weighted_sample
from ticket.codec import DTYPES, Kind, decode_vector, encode_vector
from ticket.errors import CodecError
from ticket.fedavg import weighted_mean, weighted_metrics
from ticket.packing import PackLayout
from ticket.runconfig import TrainingSettings
from ticket.train_config import TrainConfig
from ticket.wire import (
    ARRAYS,
    CONFIG,
    OPTIONAL_SCORES,
    PACKED,
    SERVER_ROUND,
    EvaluateInstruction,
    EvaluateReply,
    Schedule,
    SearchStep,
    TrainInstruction,
    TrainReply,
    WireError,
)

logger = logging.getLogger(__name__)

PAYLOAD_KEY = PACKED  # the global ArrayRecord's one array: float32 [n]
NO_REPLY = "no reply before the round timeout"


def no_reply(closed: str | None) -> str:
    """A silent node's failure reason, by how its round (or trip) closed."""
    if closed is None or closed == CLOSED_TIMEOUT:
        return NO_REPLY
    return f"no reply before the round closed ({closed})"


class ReplyError(Exception):
    """A train or evaluate reply that is not usable; it is counted and left out."""


@dataclass(frozen=True)
class RoundPlan:
    """What every sampled node is told to do in a round (sent in the ConfigRecord)."""

    ticket_id: str
    train: TrainConfig  # local epochs, batch size, lr, optimizer
    # Defaults: ticket/runconfig.py's.
    uplink_dtype: str = TrainingSettings.uplink_dtype  # how nodes encode their update
    downlink_dtype: str = TrainingSettings.downlink_dtype  # how the global values are sent
    seed: int = TrainingSettings.seed  # nodes derive their data order from (seed, round, node id)
    min_replies: int = TrainingSettings.min_replies  # fewer accepted updates keep the model
    # A fleet search's round (server/fleet_search.py): the mask the layout packs over, and
    # what the devices compute. None: ordinary training of the ticket's own mask.
    search: SearchStep | None = None

    def __post_init__(self) -> None:
        for name in ("uplink_dtype", "downlink_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {', '.join(DTYPES)}")
        if self.min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {self.min_replies}")


@dataclass
class RoundRecord:
    """Per-round bookkeeping: who was sent what, who replied with what, who was left out."""

    server_round: int
    # node id -> payload bytes sent: the train instruction plus, under federated evaluation,
    # the evaluate one (configure_evaluate adds it after the train replies are in).
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)  # node id -> payload bytes received
    accepted: list[int] = field(default_factory=list)  # node ids averaged in
    failures: dict[int, str] = field(default_factory=dict)  # node id -> its Error reply
    rejected: dict[int, str] = field(default_factory=dict)  # node id -> why its reply was refused
    train_metrics: dict[str, float] = field(default_factory=dict)  # example-weighted means
    evaluate_metrics: dict[str, float] = field(default_factory=dict)  # federated evaluation
    evaluated: list[int] = field(default_factory=list)  # node ids whose evaluation counted
    evaluate_failures: dict[int, str] = field(default_factory=dict)  # node id -> Error/silence
    evaluate_rejected: dict[int, str] = field(default_factory=dict)  # node id -> why refused
    round_trips: dict[str, int] = field(default_factory=dict)  # step -> message round trips
    secagg: dict[str, Any] | None = None  # secure aggregation's account (server/secagg_round.py)
    # How the train trip (under secure aggregation: the masked inputs') closed: round_policy's
    # "goal", "deadline", "all" or "timeout"; None before it was sent.
    closed: str | None = None
    wall_s: float = 0.0  # seconds its message trips took, all stages together
    # Replies drained during this round for a closed round's messages, discarded:
    # {"node", "round" (the one it was for), "stage"}.
    late: list[dict[str, int | str]] = field(default_factory=list)

    def metrics(self) -> dict[str, int | float]:
        """The train stage's counts (Flower's train MetricRecord: before any evaluation)."""
        return {
            "participants": len(self.accepted),
            "failures": len(self.failures),
            "rejected": len(self.rejected),
            "bytes-down": sum(self.bytes_down.values()),
            "bytes-up": sum(self.bytes_up.values()),
        }


@dataclass(frozen=True, eq=False)
class _Update:
    node_id: int
    values: np.ndarray  # float32 [n]
    examples: int
    metrics: dict[str, float]


class PackedFedAvg(FedAvg):
    """FedAvg whose messages carry codec bytes over the ticket's mask instead of dense arrays."""

    def __init__(
        self,
        layout: PackLayout,
        plan: RoundPlan,
        *,
        rounds: RoundPolicy | None = None,
        **fedavg_options: Any,
    ) -> None:
        # FedAvg assembles the instructions from the two records of ticket/wire.py's messages.
        super().__init__(arrayrecord_key=ARRAYS, configrecord_key=CONFIG, **fedavg_options)
        self.layout = layout
        self.plan = plan
        self.policy = rounds if rounds is not None else RoundPolicy()
        self.history = FailureHistory()  # who failed how recently: weights managed sampling
        self._deadline_grid: DeadlineGrid | None = None  # set by start()
        self.rounds: dict[int, RoundRecord] = {}  # by run-wide round number
        self._evaluate_sent: set[int] = set()  # nodes sent this round's evaluate instruction
        self._offset = 0  # rounds finished before this start() (a resumed run)

    def start(  # noqa: PLR0917  # Flower's signature, plus first_round
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        first_round: int = 1,
    ) -> Result:
        """Run rounds `first_round`..`num_rounds` from `initial_arrays` (a resumed run's state).

        Flower's loop counts its rounds from 1; every round number this strategy sends, logs,
        records or passes to `evaluate_fn` (and the keys of the Result) is the run-wide one,
        `first_round - 1` higher. `evaluate_fn` is called with `first_round - 1` before the
        first round, as Flower calls it with 0.
        """
        if first_round < 1:
            raise ValueError(f"first_round must be >= 1, got {first_round}")
        offset = first_round - 1
        if num_rounds <= offset:
            return Result()  # nothing left to run: the caller already holds the final state
        shifted = None
        if evaluate_fn is not None:
            hook = evaluate_fn

            def shifted(local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                return hook(local_round + offset, arrays)

        self._offset = offset
        deadline_grid = grid if isinstance(grid, DeadlineGrid) else DeadlineGrid(grid)
        self._deadline_grid = deadline_grid
        try:
            result = super().start(
                deadline_grid,
                initial_arrays,
                num_rounds - offset,
                timeout,
                train_config,
                evaluate_config,
                shifted,
            )
        finally:
            self._offset = 0
        return _shift_rounds(result, offset)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self._offset
        refuse_extra_config(config)
        payload = self._encode_global(server_round, arrays)
        instruction = self._train_instruction(server_round, payload)
        content = to_flower(instruction.to_record())
        wire, wire_config = content.array_records[ARRAYS], content.config_records[CONFIG]
        size = instruction.size
        if self.policy.managed:
            nodes = self.sample(server_round, grid)
            wire_config[SERVER_ROUND] = server_round  # as FedAvg.configure_train does
            record_dict = RecordDict({ARRAYS: wire, CONFIG: wire_config})
            messages = list(self._construct_messages(record_dict, nodes, MessageType.TRAIN))
        else:
            with seeded_sampling(self.plan.seed, server_round, "train"):
                messages = list(super().configure_train(server_round, wire, wire_config, grid))
        self.expect(server_round, "train", goal=self.policy.goal, minimum=self.plan.min_replies)
        record = self.rounds.setdefault(server_round, RoundRecord(server_round))
        for message in messages:
            record.bytes_down[message.metadata.dst_node_id] = size
        if messages:
            record.round_trips["train"] = 1
        return messages

    def sample(self, server_round: int, grid: Grid) -> list[int]:
        """A managed round's cohort: once min-nodes are online, ceil(goal x overselect) of
        them, failure-weighted (server/round_policy.py); sorted."""
        _, online = sample_nodes(grid, self.min_available_nodes, 0)  # waits for min-nodes
        size = self.policy.sample_size(len(online), self.min_train_nodes)
        return weighted_sample(
            online,
            size,
            self.history,
            seed=self.plan.seed,
            server_round=server_round,
            stage="train",
        )

    def expect(
        self,
        server_round: int,
        stage: str,
        *,
        goal: int | None = None,
        minimum: int = 1,
        counted: frozenset[int] | None = None,
        enough: Callable[[frozenset[int]], bool] | None = None,
    ) -> None:
        """Announce how the next message trip may close: under a round goal, at `goal` or
        at the deadline with `minimum` (or `enough`); without one, when all replied."""
        if self._deadline_grid is None:
            return  # not started: nothing will be sent
        if not self.policy.managed:
            self._deadline_grid.expect(Expect(server_round, stage))
            return
        self._deadline_grid.expect(
            Expect(
                server_round,
                stage,
                goal=goal,
                minimum=minimum,
                deadline_s=self.policy.deadline_s,
                counted=counted,
                enough=enough,
            )
        )

    def account_trips(self) -> Trip | None:
        """Book the finished message trips into their rounds' records; the last one."""
        if self._deadline_grid is None:
            return None
        trips = self._deadline_grid.take_trips()
        for trip in trips:
            if trip.round < 1:
                continue
            record = self.rounds.setdefault(trip.round, RoundRecord(trip.round))
            record.wall_s += trip.wall_s
            record.late.extend(late.to_json() for late in trip.late)
            if trip.stage == "train":
                record.closed = trip.closed
        return trips[-1] if trips else None

    def _train_instruction(self, server_round: int, payload: bytes) -> TrainInstruction:
        """What every sampled node is told in a round: the round plan and the global values."""
        plan, train = self.plan, self.plan.train
        return TrainInstruction(
            ticket_id=plan.ticket_id,
            server_round=server_round,
            payload=payload,
            dtype=plan.uplink_dtype,
            schedule=Schedule(train.epochs, train.batch_size, train.lr, train.optimizer),
            seed=plan.seed,
            search=plan.search,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self._offset
        self.account_trips()
        record = self.rounds.setdefault(server_round, RoundRecord(server_round))
        updates: list[_Update] = []
        for message in replies:
            node = message.metadata.src_node_id
            if message.has_error():
                record.failures[node] = f"error {message.error.code}: {message.error.reason}"
                logger.warning(
                    "round %d: node %d failed: %s", server_round, node, record.failures[node]
                )
                continue
            try:
                updates.append(self._read_update(server_round, message, record))
            except (ReplyError, WireError, CodecError) as error:
                record.rejected[node] = str(error)
                logger.warning("round %d: rejected node %d: %s", server_round, node, error)
        answered = record.bytes_up.keys() | record.failures.keys() | record.rejected.keys()
        for node in sorted(record.bytes_down.keys() - answered):
            # Sent, never answered: the node went away mid-round, or the round closed first.
            record.failures[node] = no_reply(record.closed)
            logger.warning(
                "round %d: node %d failed: %s", server_round, node, record.failures[node]
            )
        record.accepted = [update.node_id for update in updates]
        self.history.observe(record.failures)
        record.train_metrics = weighted_metrics(
            [u.metrics for u in updates], [u.examples for u in updates]
        )
        metrics = MetricRecord({**record.metrics(), **record.train_metrics})
        if len(updates) < self.plan.min_replies:
            logger.warning(
                "round %d: %d usable updates, need %d; global model unchanged",
                server_round,
                len(updates),
                self.plan.min_replies,
            )
            return None, metrics
        mean = weighted_mean([u.values for u in updates], [u.examples for u in updates])
        return ArrayRecord({PAYLOAD_KEY: Array(mean)}), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self._offset
        refuse_extra_config(config)
        payload = self._encode_global(server_round, arrays)
        ask = EvaluateInstruction(self.plan.ticket_id, server_round, payload)
        content = to_flower(ask.to_record())
        wire, wire_config = content.array_records[ARRAYS], content.config_records[CONFIG]
        size = len(payload)
        with seeded_sampling(self.plan.seed, server_round, "evaluate"):
            messages = list(super().configure_evaluate(server_round, wire, wire_config, grid))
        self._evaluate_sent = {message.metadata.dst_node_id for message in messages}
        self.expect(server_round, "evaluate")  # every asked node, or the deadline with one
        if messages:
            record = self.rounds.setdefault(server_round, RoundRecord(server_round))
            for node in self._evaluate_sent:
                # Added to the train instruction's bytes (and, under secure aggregation, its
                # protocol trips'): bytes_down is all a node was sent in the round.
                record.bytes_down[node] = record.bytes_down.get(node, 0) + size
            record.round_trips["evaluate"] = 1
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The example-weighted mean of the valid evaluations; None when there is none.

        Flower's FedAvg would check the replies as a whole and raise on one malformed reply;
        here each is checked on its own and a bad one is only counted.
        """
        server_round += self._offset
        trip = self.account_trips()
        record = self.rounds.setdefault(server_round, RoundRecord(server_round))
        sent, self._evaluate_sent = self._evaluate_sent, set()
        reports: dict[int, tuple[int, dict[str, float]]] = {}  # node -> (examples, metrics)
        for message in replies:
            node = message.metadata.src_node_id
            if message.has_error():
                reason = f"error {message.error.code}: {message.error.reason}"
                record.evaluate_failures[node] = reason
                logger.warning(
                    "round %d: node %d failed to evaluate: %s", server_round, node, reason
                )
                continue
            try:
                if node not in sent:
                    raise ReplyError("evaluation from a node that was not asked this round")
                if node in reports or node in record.evaluate_rejected:
                    raise ReplyError("second evaluation from the same node")
                scores = EvaluateReply.from_record(from_flower(message.content))
                reports[node] = (scores.examples, scores.scores())
            except (ReplyError, WireError) as error:
                # A rejected duplicate leaves the node's first, valid evaluation counted.
                record.evaluate_rejected.setdefault(node, str(error))
                logger.warning(
                    "round %d: rejected evaluation of node %d: %s", server_round, node, error
                )
        answered = (
            reports.keys() | record.evaluate_failures.keys() | record.evaluate_rejected.keys()
        )
        silent = no_reply(trip.closed if trip is not None else None)
        for node in sorted(sent - answered):
            record.evaluate_failures[node] = silent
            logger.warning("round %d: node %d failed to evaluate: %s", server_round, node, silent)
        record.evaluated = sorted(reports)
        if not reports:
            return None
        examples = [reports[node][0] for node in record.evaluated]
        metrics = [reports[node][1] for node in record.evaluated]
        record.evaluate_metrics = weighted_metrics(metrics, examples, optional=OPTIONAL_SCORES)
        return MetricRecord(dict(record.evaluate_metrics))

    def _encode_global(self, server_round: int, arrays: ArrayRecord) -> bytes:
        """Codec bytes (kind MODEL) of the global values."""
        return encode_vector(
            arrays[PAYLOAD_KEY].numpy(),
            kind=Kind.MODEL,
            ticket_id=self.plan.ticket_id,
            round=server_round,
            dtype=self.plan.downlink_dtype,
            segment_sizes=self.layout.segment_sizes,
            rng=np.random.default_rng([self.plan.seed, server_round]),  # int8 rounding only
        )

    def _read_update(self, server_round: int, message: Message, record: RoundRecord) -> _Update:
        node = message.metadata.src_node_id
        if node not in record.bytes_down:
            raise ReplyError("reply from a node that was not sent this round")
        if node in record.bytes_up:
            raise ReplyError("second reply from the same node")
        records = from_flower(message.content)
        size = TrainReply.payload_size(records)
        if size is not None:
            record.bytes_up[node] = size  # counted even when refused: it was received
        update = TrainReply.from_record(records)
        values = decode_vector(
            update.payload,
            kind=Kind.UPDATE,
            ticket_id=self.plan.ticket_id,
            round=server_round,
            length=self.layout.size,
            segment_sizes=self.layout.segment_sizes,
            dtype=self.plan.uplink_dtype,
        )
        return _Update(node, values, update.examples, update.scores())


def refuse_extra_config(config: ConfigRecord) -> None:
    """`start(train_config=..., evaluate_config=...)` has no place on the typed wire."""
    if len(config):
        raise ValueError(f"extra instruction config {sorted(config)}: not part of ticket/wire.py")


@contextmanager
def seeded_sampling(seed: int, server_round: int, stage: str) -> Iterator[None]:
    """Seed the global `random` that Flower samples nodes with, then restore it.

    Sampling then depends on (seed, round, stage) only, so a resumed run samples the nodes the
    uninterrupted run would have (given the same list of connected nodes).
    """
    state = random.getstate()
    random.seed(f"ticketfleet:{seed}:{server_round}:{stage}")  # a str seed is stable
    try:
        yield
    finally:
        random.setstate(state)


def _shift_rounds(result: Result, offset: int) -> Result:
    """`result` with its per-round keys moved from Flower's 1.. to the run-wide numbering."""
    if offset == 0:
        return result
    return Result(
        arrays=result.arrays,
        train_metrics_clientapp={r + offset: m for r, m in result.train_metrics_clientapp.items()},
        evaluate_metrics_clientapp={
            r + offset: m for r, m in result.evaluate_metrics_clientapp.items()
        },
        evaluate_metrics_serverapp={
            r + offset: m for r, m in result.evaluate_metrics_serverapp.items()
        },
    )
