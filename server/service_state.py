"""What the running `fleet-server run` service is doing, published for `status` and metrics.

The service rewrites `state_dir/service.json` (atomically) whenever what it does changes: idle
and why, or training which ticket in which run directory and Flower run, and the segments of
work before, each naming the ticket its rounds trained. `fleet-server status` and the metrics
endpoint read this file instead of asking the SuperLink through the `flwr` CLI, which takes
seconds to start. Light on purpose: no torch or flwr.
"""

import json
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_text

FORMAT = 1
KEPT_SEGMENTS = 100  # the most recent work segments the file keeps

STARTING = "starting"
IDLE = "idle"  # the SuperLink serves the fleet; nothing to train
TRAINING = "training"
SEARCHING = "searching"  # a fleet search queued by `fleet-server find`
SWITCHING = "switching"  # asked the run to stop after its round: another ticket is active
BACKOFF = "backoff"  # a run failed; the next try waits
STOPPED = "stopped"  # fleet-server run has ended


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Segment:
    """One stretch of training: a ticket in its run directory, from one round to another."""

    ticket: str | None  # content id; None for a configured run.ticket not yet read
    run_dir: str
    run_id: int | None
    first_round: int  # the first round this segment runs
    last_round: int  # the last round it finished so far (first_round - 1: none yet)
    started_at: str
    ended_at: str | None = None
    outcome: str | None = None  # e.g. "completed", "switched to 0de37fe5a1b2", "failed: ..."

    @classmethod
    def from_json(cls, document: Any) -> "Segment | None":
        if not isinstance(document, dict):
            return None
        try:
            return cls(**{name: document[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


@dataclass(frozen=True)
class ServiceState:
    pid: int
    started_at: str
    phase: str = STARTING
    detail: str = ""  # a sentence for the operator: why idle, what it waits for
    ticket: str | None = None
    run_dir: str | None = None
    run_id: int | None = None
    run_status: str | None = None  # as the SuperLink last said
    rounds_planned: int | None = None
    updated_at: str = ""
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["segments"] = [asdict(segment) for segment in self.segments]
        return {"format": FORMAT, **document}

    @property
    def alive(self) -> bool:
        """Whether the process that wrote this is still running."""
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process under this pid: ours is gone
        return False
    return True


def read_state(path: Path) -> ServiceState | None:
    """The last published state; None when there is none or it is unreadable (a status
    command must not fail because the service was killed mid-way; the write is atomic, so
    that only happens to a file someone else wrote)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return None
    segments = tuple(
        segment
        for segment in map(Segment.from_json, document.get("segments") or [])
        if segment is not None
    )
    try:
        values = {
            name: document[name]
            for name in ServiceState.__dataclass_fields__
            if name in document and name != "segments"
        }
        return ServiceState(**values, segments=segments)
    except TypeError:
        return None


class ServicePublisher:
    """Keeps `service.json` up to date for one running service; writes only on a change."""

    def __init__(self, path: Path, pid: int) -> None:
        self.path = path
        earlier = read_state(path)
        self.state = ServiceState(
            pid=pid,
            started_at=now_iso(),
            segments=() if earlier is None else _closed(earlier.segments),
        )
        self._write()

    def update(self, **changes: Any) -> None:
        state = replace(self.state, **changes)
        if state != self.state:
            self.state = state
            self._write()

    def begin_segment(self, ticket: str | None, run_dir: Path, first_round: int) -> None:
        segment = Segment(ticket, str(run_dir), None, first_round, first_round - 1, now_iso())
        self.update(segments=(*self.state.segments, segment)[-KEPT_SEGMENTS:])

    def progress(self, *, run_id: int | None = None, last_round: int | None = None) -> None:
        """The open segment's Flower run id and last finished round."""
        if not self.state.segments or self.state.segments[-1].ended_at is not None:
            return
        *before, current = self.state.segments
        changed = replace(
            current,
            run_id=current.run_id if run_id is None else run_id,
            last_round=current.last_round if last_round is None else last_round,
        )
        self.update(segments=(*before, changed))

    def end_segment(self, outcome: str) -> None:
        if not self.state.segments or self.state.segments[-1].ended_at is not None:
            return
        *before, current = self.state.segments
        ended = replace(current, ended_at=now_iso(), outcome=outcome)
        self.update(segments=(*before, ended))

    def _write(self) -> None:
        self.state = replace(self.state, updated_at=now_iso())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.state.as_dict(), indent=2) + "\n")


def _closed(segments: tuple[Segment, ...]) -> tuple[Segment, ...]:
    """An earlier service's segments, the one it left open (it was killed) marked so."""
    if segments and segments[-1].ended_at is None:
        last = replace(segments[-1], ended_at=now_iso(), outcome="interrupted: the service stopped")
        return (*segments[:-1], last)
    return segments


SHOWN_SEGMENTS = 5  # the work segments `fleet-server status` lists


def format_service(state: ServiceState | None) -> list[str]:
    """`fleet-server status`'s lines about the service: what it does and what it did."""
    if state is None:
        return ["service: fleet-server run has not run here yet"]
    if not state.alive:
        return [f"service: not running (last seen {state.updated_at}, pid {state.pid})"]
    lines = [f"service: {state.phase} since {state.updated_at} (pid {state.pid})"]
    if state.detail:
        lines.append(f"  {state.detail}")
    if state.segments:
        lines.append("work so far (each ticket's rounds):")
        for segment in state.segments[-SHOWN_SEGMENTS:]:
            rounds = (
                f"rounds {segment.first_round}-{segment.last_round}"
                if segment.last_round >= segment.first_round
                else "no round yet"
            )
            ticket = (segment.ticket or "run.ticket")[:12]
            lines.append(
                f"  {ticket:<12} {rounds:<16} {segment.started_at} -> "
                f"{segment.ended_at or 'now'}  {segment.outcome or 'running'}"
            )
    return lines
