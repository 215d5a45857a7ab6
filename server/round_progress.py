"""The round in flight, as the ServerApp sees it: `run_dir/round.json`, for `fleet-server status`.

The ServerApp (server/deadline_grid.py) rewrites the file, atomically, whenever a message trip
of a round starts or a reply comes in; the service and `status` only read it. Light on
purpose: no torch or flwr.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ticket.atomic import atomic_write_text

ROUND_FILE = "round.json"


@dataclass(frozen=True)
class RoundProgress:
    round: int
    stage: str  # "train", "evaluate", or a secure aggregation trip
    sent: int  # messages of this trip
    replied: int  # replies in so far, errors included
    usable: int  # error-free replies from the nodes that count
    elapsed_s: float
    goal: int | None = None  # closes at this many usable replies
    deadline_s: float | None = None  # closes after this, with enough usable replies
    closed: str | None = None  # how the trip closed; None while it waits

    def describe(self) -> str:
        """One line for the operator: what the round waits for."""
        state = f"closed ({self.closed})" if self.closed else "in progress"
        line = (
            f"round {self.round} {state}: {self.stage}, {self.replied} of {self.sent} replies "
            f"in ({self.usable} usable), {self.elapsed_s:.0f} s"
        )
        if self.closed is None:
            closes = [f"goal {self.goal}"] if self.goal is not None else []
            if self.deadline_s is not None:
                closes.append(f"deadline {self.deadline_s:.0f} s")
            line += "; closes at " + (" or ".join(closes) if closes else "every reply or timeout")
        return line


class ProgressFile:
    """Writes `round.json` in a run directory, only when what it says changes."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ROUND_FILE
        self._last: tuple[object, ...] | None = None

    def __call__(self, progress: RoundProgress) -> None:
        key = (progress.round, progress.stage, progress.replied, progress.usable, progress.closed)
        if key == self._last:
            return
        self._last = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(asdict(progress)) + "\n")


def read_progress(run_dir: Path) -> RoundProgress | None:
    """The last progress written in `run_dir`; None if none or unreadable."""
    try:
        document = json.loads((Path(run_dir) / ROUND_FILE).read_text(encoding="utf-8"))
        return RoundProgress(**document)
    except (OSError, ValueError, TypeError):
        return None
