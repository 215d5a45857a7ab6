"""Round management (Bonawitz et al. 2019, "Towards Federated Learning at Scale"), pure.

A round has a goal count of updates. It samples ceil(goal x overselect) nodes (capped by the
online nodes, at least min-nodes), so that a few slow or vanished devices do not hold it up:
it closes as soon as `goal` usable replies are in ("goal"), or at the reporting deadline with
whatever arrived if at least min-replies did ("deadline"); with fewer it waits on, up to the
round timeout ("timeout"), like a round always did. Every sampled node answering first closes
it "all". Goal 0 is the behaviour before round management: every sampled node (fraction-train
of the online ones), waited for up to the round timeout; no over-selection, no deadline, and
Flower's uniform sampling.

Devices that keep failing are sampled less: `FailureHistory` keeps an exponentially decayed
count of each node's failed rounds (no reply, an error), and `weighted_sample` draws without
replacement with weight FAILURE_BASE ** score (Efraimidis-Spirakis keys from a generator seeded
by (seed, round, stage)), so the same history and online list always give the same sample. The
history is rebuilt on resume from the run log's "failures" maps (`FailureHistory.from_lines`).

server/deadline_grid.py applies the closing rules to Flower's Grid; this module only decides.
"""

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ticket.runconfig import TrainingSettings

FAILURE_DECAY = 0.5  # each round halves a node's failure score: a recovered node is forgiven
FAILURE_BASE = 0.5  # sampling weight = FAILURE_BASE ** score: failing every round -> 1/4

CLOSED_GOAL = "goal"  # `goal` usable replies arrived
CLOSED_DEADLINE = "deadline"  # the reporting deadline passed with at least the minimum in
CLOSED_ALL = "all"  # every node sent a reply
CLOSED_TIMEOUT = "timeout"  # the round timeout passed
CLOSINGS = (CLOSED_GOAL, CLOSED_DEADLINE, CLOSED_ALL, CLOSED_TIMEOUT)


@dataclass(frozen=True)
class RoundPolicy:
    """The run config's round keys, typed (defaults: ticket/runconfig.py's)."""

    goal: int = TrainingSettings.round_goal  # [round-goal] 0: every sampled node
    overselect: float = TrainingSettings.round_overselect  # [round-overselect]
    deadline_s: float = TrainingSettings.round_deadline_s  # [round-deadline-s]

    def __post_init__(self) -> None:
        if isinstance(self.goal, bool) or self.goal < 0:
            raise ValueError(f"round goal must be an integer >= 0, got {self.goal}")
        if not self.overselect >= 1:
            raise ValueError(f"round over-selection must be >= 1, got {self.overselect}")
        if not self.deadline_s > 0:
            raise ValueError(f"round deadline must be > 0 s, got {self.deadline_s}")

    @classmethod
    def of(cls, run: TrainingSettings) -> "RoundPolicy":
        return cls(
            goal=run.round_goal,
            overselect=run.round_overselect,
            deadline_s=run.round_deadline_s,
        )

    @property
    def managed(self) -> bool:
        """Whether rounds have a goal (and so over-selection and a deadline)."""
        return self.goal > 0

    def sample_size(self, online: int, min_nodes: int) -> int:
        """How many of `online` nodes a managed round samples: ceil(goal x overselect), at
        least `min_nodes`, at most `online`."""
        if not self.managed:
            raise ValueError("goal 0 samples fraction-train of the online nodes (Flower's)")
        wanted = max(math.ceil(self.goal * self.overselect - 1e-9), min_nodes)
        return max(0, min(wanted, online))


def check_goal_fits_fleet(goal: int, enrolled: int) -> str | None:
    """Why `goal` cannot be met by a fleet of `enrolled` nodes (None: it can).

    For `fleet-server run`: a goal above the enrolled count would close every round at its
    deadline at best, never at its goal."""
    if goal > enrolled:
        return (
            f"run.round_goal is {goal}, but only {enrolled} node(s) are enrolled: "
            f"no round could reach its goal; lower run.round_goal or enrol more devices"
        )
    return None


@dataclass
class FailureHistory:
    """Per node, an exponentially decayed count of its failed rounds."""

    scores: dict[int, float] = field(default_factory=dict)

    def observe(self, failed: Iterable[int]) -> None:
        """One finished round: every score decays, each failed node's grows by 1."""
        self.scores = {node: score * FAILURE_DECAY for node, score in self.scores.items()}
        for node in set(failed):
            self.scores[node] = self.scores.get(node, 0.0) + 1.0
        self.scores = {node: score for node, score in self.scores.items() if score > 1e-6}

    def weight(self, node: int) -> float:
        return float(FAILURE_BASE ** self.scores.get(node, 0.0))

    @classmethod
    def from_lines(cls, lines: Iterable[Mapping[str, Any]]) -> "FailureHistory":
        """The history a run had after the rounds of these run-log lines (rounds.jsonl)."""
        history = cls()
        for line in sorted(lines, key=lambda line: int(line["round"])):
            failures = line.get("failures") or {}
            history.observe(int(node) for node in failures)
        return history


def weighted_sample(
    nodes: Sequence[int],
    size: int,
    history: FailureHistory,
    *,
    seed: int,
    server_round: int,
    stage: str,
) -> list[int]:
    """`size` distinct nodes, a node's chance scaled by its weight; sorted. Deterministic in
    (nodes as a set, size, history, seed, round, stage)."""
    pool = sorted(set(nodes))
    if size >= len(pool):
        return pool
    rng = random.Random(f"ticketfleet:{seed}:{server_round}:{stage}:weighted")  # a stable seed
    keys = {}
    for node in pool:  # one draw per node, in id order: independent of the list's order
        u = 1.0 - rng.random()  # (0, 1]
        keys[node] = math.log(u) / history.weight(node)  # log of u ** (1 / w): larger first
    chosen = sorted(pool, key=lambda node: (-keys[node], node))[:size]
    return sorted(chosen)
