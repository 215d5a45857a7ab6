"""Push a signed ticket to the connected devices and collect who installed it and who refused.

A rollout is one Flower run (ServerApp with run config `mode = "deploy"`): a "query" message to
every connected node carrying the bundle (ticket/wire.py's InstallPush and InstallAck). Each
device verifies it against its own fleet key and answers installed or rejected-with-reason;
a node that does not answer before the timeout counts as offline. The push and its pulls are
separate (`grid.push_messages`, then `grid.pull_messages` until every node answered or the
timeout), so each ack is reported (`on_ack`) as it arrives: the ServerApp appends it to the run
directory's progress file (server/rollout_progress.py), which `ticket deploy` follows. With a
canary fraction,
a seeded sample goes first, and the rest only if the canary installed it cleanly (every device,
or the `min_installed` fraction the rollout must reach anyway) and, when a
`CanaryCheck` is given, the canary's evaluation does not regress (below). The outcome is
written atomically to `<run-dir>/deploy.json`, which `ticket deploy` prints as a table; a
failed rollout's `reason` says why (no device connected, the canary, too few installed).

The canary's evaluation asks a question about tickets, not about a trained model: does the new
ticket learn on our devices' data as well as the active one? A ticket is (mask, W_k), whose
worth is the accuracy it reaches once trained, so each canary device gets one "evaluate"
message per ticket carrying its W_k and a short training schedule: it trains from W_k on its
own readings and scores the result on its held-out rows (edge_daemon/client_app.py; nothing is
kept, no round is counted). Both tickets see the same devices, data order and schedule; the
rollout goes on only if the example-weighted accuracy of the new ticket is at least the active
one's minus `max_regression`, over the devices that scored both.
"""

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flwr.app import Message
from flwr.common import MessageType
from flwr.serverapp import Grid

from flower_wire import from_flower, to_flower
from server.broadcast import POLL_S, broadcast
from server.rollout_progress import NO_DEVICE
from ticket.atomic import atomic_write_text
from ticket.bundle import Ticket
from ticket.codec import Kind, encode_vector
from ticket.packing import PackLayout
from ticket.runconfig import RolloutSettings, TrainingSettings
from ticket.train_config import TrainConfig
from ticket.wire import (
    INSTALLED,
    REJECTED,
    EvaluateInstruction,
    EvaluateReply,
    InstallAck,
    InstallPush,
    Probe,
    Schedule,
    WireError,
)

OFFLINE = "offline"
SKIPPED = "skipped"  # not pushed: the canary did not install cleanly, or it regressed
CANDIDATE = "candidate"
BASELINE = "baseline"


@dataclass(frozen=True)
class Ack:
    node_id: int
    status: str  # installed, rejected, offline or skipped
    reason: str = ""
    canary: bool = False


AckSink = Callable[[Ack], None]  # told of each ack as it arrives


def _ignore(ack: Ack) -> None:
    pass


@dataclass(frozen=True, eq=False)
class CanaryCheck:
    """The canary's evaluation (module docstring): the new ticket against the active one."""

    candidate: Ticket
    baseline: Ticket | None  # the active ticket; None: nothing to compare against
    train: TrainConfig  # the schedule each canary device trains both tickets with
    # accuracy the new ticket may lose against the active one (default: ticket/runconfig.py's)
    max_regression: float = RolloutSettings.canary_max_regression
    seed: int = TrainingSettings.seed

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_regression <= 1.0:
            raise ValueError(f"max_regression must be in [0, 1], got {self.max_regression}")


@dataclass(frozen=True)
class CanaryScore:
    """One ticket's canary evaluation: example-weighted accuracy over the devices that scored."""

    ticket_id: str
    by_node: dict[int, float]  # node id -> its accuracy
    examples_by_node: dict[int, int]  # node id -> held-out rows it scored
    errors: dict[int, str]  # node id -> why it could not score

    @property
    def examples(self) -> int:
        return sum(self.examples_by_node.values())

    @property
    def accuracy(self) -> float | None:
        """Example-weighted over every device that scored; None when none did."""
        return self.mean_over(list(self.by_node)) if self.by_node else None

    def mean_over(self, nodes: Sequence[int]) -> float:
        """Example-weighted accuracy over `nodes` (each of which scored)."""
        total = sum(self.examples_by_node[node] for node in nodes)
        return sum(self.by_node[n] * self.examples_by_node[n] for n in nodes) / total


@dataclass(frozen=True)
class CanaryVerdict:
    passed: bool
    reason: str
    candidate: CanaryScore
    baseline: CanaryScore | None
    max_regression: float

    def to_json(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "max_regression": self.max_regression,
            CANDIDATE: _score_json(self.candidate),
            BASELINE: None if self.baseline is None else _score_json(self.baseline),
        }


@dataclass
class Rollout:
    ticket_id: str
    acks: list[Ack] = field(default_factory=list)
    canary: CanaryVerdict | None = None
    # The fraction of devices that must install for the rollout to count (and the canary's
    # share of its own devices); 1.0: every one. A fleet always has a device or two away.
    min_installed: float = 1.0

    @property
    def installed_fraction(self) -> float:
        installed = sum(ack.status == INSTALLED for ack in self.acks)
        return installed / len(self.acks) if self.acks else 0.0

    @property
    def succeeded(self) -> bool:
        enough = bool(self.acks) and self.installed_fraction >= self.min_installed
        return enough and (self.canary is None or self.canary.passed)

    @property
    def reason(self) -> str:
        """Why the rollout did not succeed ("" if it did)."""
        if self.succeeded:
            return ""
        if not self.acks:
            return NO_DEVICE
        if self.canary is not None and not self.canary.passed:
            return f"canary evaluation failed: {self.canary.reason}"
        skipped = [ack for ack in self.acks if ack.status == SKIPPED]
        if skipped:
            return skipped[0].reason
        installed = sum(ack.status == INSTALLED for ack in self.acks)
        return (
            f"{installed} of {len(self.acks)} devices installed it; {self.min_installed:.0%} had to"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "ticket_id": self.ticket_id,
            "succeeded": self.succeeded,
            "reason": self.reason,
            "min_installed": self.min_installed,
            "nodes": [asdict(ack) for ack in sorted(self.acks, key=lambda a: a.node_id)],
            "canary": None if self.canary is None else self.canary.to_json(),
        }


def roll_out(
    grid: Grid,
    bundle: bytes,
    ticket_id: str,
    *,
    timeout: float,
    canary_fraction: float = RolloutSettings.canary_fraction,
    seed: int = TrainingSettings.seed,
    check: CanaryCheck | None = None,
    min_installed: float = RolloutSettings.min_installed,
    on_ack: AckSink = _ignore,
) -> Rollout:
    """Push `bundle` to every connected node (canary first when `canary_fraction` > 0, then,
    with `check`, the canary's evaluation before the rest); `on_ack` hears of every ack, the
    skipped nodes' included, as it is known."""
    if not 0.0 <= canary_fraction <= 1.0:
        raise ValueError(f"canary fraction must be in [0, 1], got {canary_fraction}")
    if not 0.0 < min_installed <= 1.0:
        raise ValueError(f"min_installed must be in (0, 1], got {min_installed}")
    nodes = sorted(grid.get_node_ids())
    rollout = Rollout(ticket_id, min_installed=min_installed)
    if not nodes:
        return rollout
    canary: list[int] = []
    if canary_fraction > 0:
        size = max(1, math.ceil(canary_fraction * len(nodes)))
        canary = sorted(random.Random(f"ticketfleet.canary:{seed}").sample(nodes, size))
        rollout.acks += push(
            grid, bundle, ticket_id, canary, timeout=timeout, canary=True, on_ack=on_ack
        )
        why_not = None if rollout.succeeded else "the canary did not install cleanly"
        if why_not is None and check is not None:  # scored where it is installed
            installed = [ack.node_id for ack in rollout.acks if ack.status == INSTALLED]
            rollout.canary = evaluate_canary(grid, installed, check, timeout=timeout)
            why_not = None if rollout.canary.passed else rollout.canary.reason
        if why_not is not None:
            rest = [node for node in nodes if node not in canary]
            skipped = [Ack(node, SKIPPED, why_not) for node in rest]
            for ack in skipped:
                on_ack(ack)
            rollout.acks += skipped
            return rollout
    rest = [node for node in nodes if node not in canary]
    rollout.acks += push(grid, bundle, ticket_id, rest, timeout=timeout, on_ack=on_ack)
    return rollout


def push(
    grid: Grid,
    bundle: bytes,
    ticket_id: str,
    nodes: Sequence[int],
    *,
    timeout: float,
    canary: bool = False,
    on_ack: AckSink = _ignore,
    poll_s: float | None = None,
) -> list[Ack]:
    """Push the bundle to `nodes` and pull their acks until all answered or `timeout` passed;
    an ack per node (offline for the silent ones), each given to `on_ack` as it arrives."""
    acks: dict[int, Ack] = {}
    content = to_flower(InstallPush(ticket_id, bundle).to_record())
    for answer in broadcast(
        grid, content, nodes, timeout=timeout, poll_s=POLL_S if poll_s is None else poll_s
    ):
        if answer.reply is not None:
            ack = _read_ack(answer.reply, answer.node_id, ticket_id, canary)
        else:
            status = OFFLINE if answer.silent else REJECTED
            ack = Ack(answer.node_id, status, answer.reason, canary)
        acks[ack.node_id] = ack
        on_ack(ack)
    return [acks[node] for node in nodes]


def evaluate_canary(
    grid: Grid, nodes: Sequence[int], check: CanaryCheck, *, timeout: float
) -> CanaryVerdict:
    """Score the candidate, then the baseline, on the canary devices: a round trip each (a
    reply does not say which ticket it scored, so the two never share a trip)."""
    candidate = _score_on(grid, check.candidate, nodes, check, timeout)
    baseline = None
    if check.baseline is not None:
        baseline = _score_on(grid, check.baseline, nodes, check, timeout)
    return _verdict(candidate, baseline, check.max_regression)


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
    try:
        ack = InstallAck.from_record(from_flower(reply.content))
    except WireError as error:
        return Ack(node, REJECTED, f"the node's answer is not an acknowledgement: {error}", canary)
    if ack.status == INSTALLED and ack.ticket_id != ticket_id:
        return Ack(node, REJECTED, "the node acknowledged another ticket", canary)
    return Ack(node, ack.status, ack.reason, canary)


def _probe_message(ticket: Ticket, node: int, check: CanaryCheck) -> Message:
    layout = PackLayout.from_ticket(ticket)
    payload = encode_vector(
        layout.pack(ticket.weights),  # W_k, float32 [k]
        kind=Kind.MODEL,
        ticket_id=ticket.content_id,
        round=0,  # no training round: a rollout's probe
        segment_sizes=layout.segment_sizes,
    )
    train = check.train
    schedule = Schedule(train.epochs, train.batch_size, train.lr, train.optimizer)
    # Round 0: no training round, a rollout's probe.
    ask = EvaluateInstruction(ticket.content_id, 0, payload, Probe(schedule, check.seed))
    return Message(to_flower(ask.to_record()), dst_node_id=node, message_type=MessageType.EVALUATE)


def _score_on(
    grid: Grid, ticket: Ticket, nodes: Sequence[int], check: CanaryCheck, timeout: float
) -> CanaryScore:
    messages = [_probe_message(ticket, node, check) for node in sorted(nodes)]
    replies = grid.send_and_receive(messages, timeout=timeout)
    return _score(ticket.content_id, nodes, replies)


def _score(ticket_id: str, nodes: Sequence[int], replies: Iterable[Message]) -> CanaryScore:
    """The example-weighted accuracy of `ticket_id` over the nodes that scored it."""
    by_node: dict[int, float] = {}
    examples: dict[int, int] = {}
    errors = {node: "no answer before the timeout" for node in nodes}
    for reply in _replies_from(replies, nodes):
        node = reply.metadata.src_node_id
        if node in by_node:
            continue  # a second answer from one node counts once
        if reply.has_error():
            errors[node] = f"error {reply.error.code}: {reply.error.reason}"
            continue
        try:
            scores = EvaluateReply.from_record(from_flower(reply.content))
        except WireError as error:  # no accuracy and example count, or one out of range
            errors[node] = str(error)
            continue
        by_node[node], examples[node] = scores.accuracy, scores.examples
        del errors[node]
    return CanaryScore(ticket_id, by_node, examples, errors)


def _verdict(
    candidate: CanaryScore, baseline: CanaryScore | None, max_regression: float
) -> CanaryVerdict:
    def verdict(passed: bool, reason: str) -> CanaryVerdict:
        return CanaryVerdict(passed, reason, candidate, baseline, max_regression)

    if candidate.accuracy is None:
        return verdict(False, "no canary device could evaluate the new ticket")
    if candidate.errors:
        return verdict(False, f"{len(candidate.errors)} canary device(s) could not evaluate it")
    if baseline is None:
        return verdict(True, f"no active ticket to compare with; accuracy {candidate.accuracy:.4f}")
    shared = sorted(set(candidate.by_node) & set(baseline.by_node))
    if not shared:
        return verdict(False, "no canary device could evaluate the active ticket to compare")
    # Compare on the devices that scored both, so a device lacking the old ticket cannot tilt it.
    new, old = candidate.mean_over(shared), baseline.mean_over(shared)
    if new < old - max_regression:
        return verdict(
            False,
            f"the canary's evaluation regressed: accuracy {new:.4f} against {old:.4f} for the "
            f"active ticket (allowed loss {max_regression:.4f})",
        )
    return verdict(True, f"accuracy {new:.4f} against {old:.4f} for the active ticket")


def _score_json(score: CanaryScore) -> dict[str, object]:
    return {
        "ticket_id": score.ticket_id,
        "accuracy": score.accuracy,
        "examples": score.examples,
        "by_node": {str(node): acc for node, acc in sorted(score.by_node.items())},
        "errors": {str(node): why for node, why in sorted(score.errors.items())},
    }
