"""What `fleet-server status` and the metrics endpoint report: a run's rounds, from its log.

Reads the run directory's rounds.jsonl (server/run_log.py) and final-model.json
(server/delivery_record.py) and nothing else, so it works while the run is going, after it
finished, and while the server is down.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from server.delivery_record import DeliveryRecord, DeliveryRecordError, load_record
from server.run_log import RunLog


@dataclass(frozen=True)
class RoundSummary:
    round: int
    finished_at: str | None
    participants: int
    dropouts: int  # nodes that failed or whose update was rejected
    server_accuracy: float | None  # the server's held-out evaluation
    federated_accuracy: float | None  # the nodes' own evaluation, example-weighted
    bytes_up: int
    bytes_down: int
    ticket: str | None = None  # the content id the round trained (None: an older log line)
    # Round management (older lines lack them): how the round closed, its wall time, and the
    # late replies (for closed rounds) discarded during it.
    closed: str | None = None
    wall_s: float | None = None
    late: int = 0
    # Differential privacy (None: off, or the round released nothing): the run's epsilon after
    # this round, at `delta`.
    epsilon: float | None = None
    delta: float | None = None

    @property
    def accuracy(self) -> float | None:
        """Held-out accuracy when the server evaluates, else the federated one."""
        return self.server_accuracy if self.server_accuracy is not None else self.federated_accuracy


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    rounds_planned: int
    rounds: list[RoundSummary] = field(default_factory=list)
    run_id: int | None = None  # the Flower run last submitted
    run_status: str | None = None  # as `flwr ls` says; None when the SuperLink is not running
    # Who holds the final model (None: not pushed yet), or why final-model.json is unreadable.
    final_model: DeliveryRecord | str | None = None

    @property
    def last_round(self) -> int:
        return self.rounds[-1].round if self.rounds else 0

    @property
    def dropouts_total(self) -> int:
        return sum(summary.dropouts for summary in self.rounds)

    @property
    def bytes_up_total(self) -> int:
        return sum(summary.bytes_up for summary in self.rounds)

    @property
    def bytes_down_total(self) -> int:
        return sum(summary.bytes_down for summary in self.rounds)

    @property
    def privacy(self) -> tuple[float, float, int] | None:
        """(epsilon, delta, rounds released) after the latest round released under DP."""
        released = [s for s in self.rounds if s.epsilon is not None and s.delta is not None]
        if not released:
            return None
        last = released[-1]
        assert last.epsilon is not None and last.delta is not None
        return last.epsilon, last.delta, len(released)

    @property
    def accuracy(self) -> float | None:
        """The latest round's accuracy that was measured."""
        measured = [s.accuracy for s in self.rounds if s.accuracy is not None]
        return measured[-1] if measured else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "run_id": self.run_id,
            "run_status": self.run_status,
            "rounds_planned": self.rounds_planned,
            "last_round": self.last_round,
            "accuracy": self.accuracy,
            "dropouts_total": self.dropouts_total,
            "bytes_up_total": self.bytes_up_total,
            "bytes_down_total": self.bytes_down_total,
            "epsilon": None if self.privacy is None else self.privacy[0],
            "rounds": [{**asdict(s), "accuracy": s.accuracy} for s in self.rounds],
            "final_model": (
                self.final_model.to_json()
                if isinstance(self.final_model, DeliveryRecord)
                else {"error": self.final_model}
                if self.final_model is not None
                else None
            ),
        }


def summarize_round(line: Mapping[str, Any]) -> RoundSummary:
    """One rounds.jsonl line, reduced to what an operator watches."""
    traffic = line.get("bytes") or {}
    secagg = line.get("secagg")
    dp = secagg.get("dp") if isinstance(secagg, dict) else None
    spent = dp if isinstance(dp, dict) else {}
    return RoundSummary(
        round=int(line["round"]),
        finished_at=line.get("finished_at"),
        participants=len(line.get("participants") or ()),
        dropouts=len(line.get("failures") or {}) + len(line.get("rejected") or {}),
        server_accuracy=_accuracy(line.get("server_eval")),
        federated_accuracy=_accuracy(line.get("federated_eval")),
        bytes_up=int(traffic.get("up_total", 0)),
        bytes_down=int(traffic.get("down_total", 0)),
        ticket=line["ticket"] if isinstance(line.get("ticket"), str) else None,
        closed=line.get("closed"),
        wall_s=line.get("wall_s"),
        late=len(line.get("late") or ()),
        epsilon=_number(spent.get("epsilon")),
        delta=_number(spent.get("delta")),
    )


def read_summary(
    run_dir: Path,
    *,
    rounds_planned: int,
    run_id: int | None = None,
    run_status: str | None = None,
) -> RunSummary:
    lines = RunLog(run_dir / "rounds.jsonl").read()
    rounds = sorted((summarize_round(line) for line in lines), key=lambda s: s.round)
    final: DeliveryRecord | str | None
    try:
        final = load_record(run_dir)
    except DeliveryRecordError as error:
        final = str(error)
    return RunSummary(run_dir, rounds_planned, rounds, run_id, run_status, final)


SHOWN_ROUNDS = 10  # the rounds `fleet-server status` lists; --json has them all


def format_summary(summary: RunSummary) -> str:
    """The human-readable `fleet-server status`: the run and its last rounds."""
    run = f"run {summary.run_id}" if summary.run_id is not None else "no run submitted yet"
    status = summary.run_status or "unknown (fleet-server run is not running)"
    lines = [
        f"{run}: {status}; round {summary.last_round}/{summary.rounds_planned}",
        f"run dir {summary.run_dir}",
        f"bytes up {summary.bytes_up_total}  down {summary.bytes_down_total}  "
        f"dropouts {summary.dropouts_total}",
    ]
    if summary.privacy is not None:
        epsilon, delta, released = summary.privacy
        lines.append(
            f"privacy: epsilon {epsilon:.3g} at delta {delta:g} over {released} released round(s)"
        )
    if summary.rounds:
        earlier = len(summary.rounds) - SHOWN_ROUNDS
        if earlier > 0:
            lines.append(f"({earlier} earlier rounds: --json lists them)")
        lines.append(
            f"{'round':>5} {'ticket':<12} {'nodes':>5} {'drop':>4} {'late':>4} {'closed':>8} "
            f"{'accuracy':>8} "
            f"{'bytes up':>10} {'bytes down':>10}  finished"
        )
        lines += [_row(s) for s in summary.rounds[-SHOWN_ROUNDS:]]
    if summary.final_model is not None:
        lines.append(format_delivery(summary.final_model))
    return "\n".join(lines)


def format_delivery(final: DeliveryRecord | str) -> str:
    """One line: who holds the final model pushed after the run's last round."""
    if isinstance(final, str):
        return f"final model: {final}"
    line = (
        f"final model (round {final.server_round}): kept by {len(final.kept)} node(s), "
        f"refused by {len(final.refused)}, {len(final.silent)} silent"
    )
    if final.refused:  # the first reason: the usual one is a fleet-wide setting
        node, why = min(final.refused.items())
        line += f" (node {node}: {why}; --json lists all)"
    return line


def _row(summary: RoundSummary) -> str:
    accuracy = "-" if summary.accuracy is None else f"{summary.accuracy:.3f}"
    return (
        f"{summary.round:>5} {(summary.ticket or '-')[:12]:<12} {summary.participants:>5} "
        f"{summary.dropouts:>4} {summary.late:>4} {summary.closed or '-':>8} {accuracy:>8} "
        f"{summary.bytes_up:>10} {summary.bytes_down:>10}  {summary.finished_at or ''}"
    )


def _accuracy(section: object) -> float | None:
    if not isinstance(section, Mapping):
        return None
    return _number(section.get("accuracy"))


def _number(value: object) -> float | None:
    """A logged figure, or None for one that is absent, not a number or NaN."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return None
    return float(value)
