"""The daemon's durable record (rounds joined, bytes sent, last metrics, cached tickets) in JSON.

Flower's `context.state` dies with the SuperNode, so this file is the device's memory. Every write
replaces the file atomically, so a kill -9 at any moment leaves the old record or the new one,
never a torn file. A file that does not parse is reported, never silently replaced: losing the
record of rounds joined is not a recovery.
"""

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_text, locked

FORMAT = "ticketfleet/edge-daemon-state"
VERSION = 2  # 2 added bytes_received and last_round; a version-1 file is read as it was
_KEYS_V1 = {"format", "version", "rounds_joined", "last_participation", "bytes_sent"}
_KEYS_V1 |= {"last_metrics", "ticket_ids"}
_KEYS = _KEYS_V1 | {"bytes_received", "last_round"}
_ROUND_KEYS = ("run_id", "round", "ticket_id")


class StateError(Exception):
    """The state file exists but is not a state this version wrote."""


@dataclass(frozen=True)
class DaemonState:
    rounds_joined: int = 0
    last_participation: datetime | None = None  # timezone-aware
    bytes_sent: int = 0  # all rounds, payload bytes uploaded
    last_metrics: Mapping[str, float | None] = field(default_factory=dict)  # None: not finite
    ticket_ids: tuple[str, ...] = ()  # content ids of the cached, verified tickets
    bytes_received: int = 0  # payload bytes of the instructions trained on, and final models
    # The last round taken part in: {"run_id", "round", "ticket_id"}; None: none yet.
    last_round: Mapping[str, int | str] | None = None

    def with_round(  # one round's whole account
        self,
        *,
        at: datetime,
        bytes_sent: int,
        metrics: Mapping[str, float],
        bytes_received: int = 0,
        run_id: int | None = None,
        server_round: int | None = None,
        ticket_id: str | None = None,
    ) -> "DaemonState":
        """This state plus one completed round (of Flower run `run_id`, training `ticket_id`)."""
        if at.tzinfo is None:
            raise ValueError("a round's time must be timezone-aware")
        if bytes_sent < 0 or bytes_received < 0:
            raise ValueError("bytes_sent and bytes_received must be >= 0")
        last_round = self.last_round
        if run_id is not None and server_round is not None and ticket_id is not None:
            last_round = {"run_id": run_id, "round": server_round, "ticket_id": ticket_id}
        return replace(
            self,
            rounds_joined=self.rounds_joined + 1,
            last_participation=at,
            bytes_sent=self.bytes_sent + bytes_sent,
            bytes_received=self.bytes_received + bytes_received,
            last_round=last_round,
            # JSON has no NaN: a diverged loss is recorded as null, not as a crash.
            last_metrics={k: float(v) if math.isfinite(v) else None for k, v in metrics.items()},
        )

    def with_received(self, size: int) -> "DaemonState":
        """This state plus `size` payload bytes received outside a round (the final model)."""
        if size < 0:
            raise ValueError("bytes received must be >= 0")
        return replace(self, bytes_received=self.bytes_received + size)

    def with_ticket(self, ticket_id: str) -> "DaemonState":
        if ticket_id in self.ticket_ids:
            return self
        return replace(self, ticket_ids=(*self.ticket_ids, ticket_id))

    def to_json(self) -> dict[str, Any]:
        last = self.last_participation
        return {
            "format": FORMAT,
            "version": VERSION,
            "rounds_joined": self.rounds_joined,
            "last_participation": None if last is None else last.isoformat(),
            "bytes_sent": self.bytes_sent,
            "last_metrics": dict(self.last_metrics),
            "ticket_ids": list(self.ticket_ids),
            "bytes_received": self.bytes_received,
            "last_round": None if self.last_round is None else dict(self.last_round),
        }

    @classmethod
    def from_json(cls, data: object) -> "DaemonState":
        """Strict inverse of `to_json`; ValueError names the first key that does not fit."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object with exactly the keys {sorted(_KEYS)}")
        if data.get("format") != FORMAT or type(data.get("version")) is not int:
            raise ValueError(f"format: expected {FORMAT!r} with an integer version")
        if data["version"] not in (1, VERSION):
            raise ValueError(f"version: this daemon reads 1 and {VERSION}, got {data['version']}")
        keys = _KEYS_V1 if data["version"] == 1 else _KEYS
        if set(data) != keys:
            raise ValueError(f"expected an object with exactly the keys {sorted(keys)}")
        if data["version"] == 1:  # written before bytes_received and last_round
            data = {**data, "bytes_received": 0, "last_round": None}
        metrics = data["last_metrics"]
        if not isinstance(metrics, dict) or not all(
            value is None or (type(value) in (int, float) and math.isfinite(value))
            for value in metrics.values()
        ):
            raise ValueError("last_metrics: expected an object of finite numbers or null")
        tickets = data["ticket_ids"]
        if not isinstance(tickets, list) or not all(isinstance(t, str) for t in tickets):
            raise ValueError("ticket_ids: expected a list of strings")
        return cls(
            rounds_joined=_count(data, "rounds_joined"),
            last_participation=_moment(data["last_participation"]),
            bytes_sent=_count(data, "bytes_sent"),
            last_metrics={str(k): None if v is None else float(v) for k, v in metrics.items()},
            ticket_ids=tuple(tickets),
            bytes_received=_count(data, "bytes_received"),
            last_round=_last_round(data["last_round"]),
        )


def _count(data: Mapping[str, object], key: str) -> int:
    value = data[key]
    if type(value) is not int or value < 0:
        raise ValueError(f"{key}: expected a whole number >= 0")
    return value


def _last_round(value: object) -> dict[str, int | str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or set(value) != set(_ROUND_KEYS)
        or type(value["run_id"]) is not int
        or type(value["round"]) is not int
        or not isinstance(value["ticket_id"], str)
    ):
        raise ValueError("last_round: expected {run_id, round, ticket_id} or null")
    return {key: value[key] for key in _ROUND_KEYS}


def _moment(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError("last_participation: expected an ISO 8601 time with a timezone, or null")
    return moment


def load_state(path: Path) -> DaemonState:
    """The state in `path`; a fresh state when the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DaemonState()
    except (OSError, UnicodeDecodeError) as error:
        raise StateError(f"{path}: cannot read: {error}") from None
    try:
        return DaemonState.from_json(json.loads(text))
    except ValueError as error:  # json.JSONDecodeError is a ValueError too
        raise StateError(
            f"{path}: not a valid daemon state ({error}); move it aside to start afresh"
        ) from None


def save_state(path: Path, state: DaemonState) -> None:
    text = json.dumps(state.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(path, text, mode=0o600)


def update_state(path: Path, change: Callable[[DaemonState], DaemonState]) -> DaemonState:
    """Apply `change` to the stored state under an exclusive lock, save it, and return it."""
    with locked(path):
        state = change(load_state(path))
        save_state(path, state)
        return state
