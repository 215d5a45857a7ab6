"""personal.json: what the last personalisation found, and whether `predict` uses its model.

Written by edge_daemon/personalise.py after every attempt, whatever the outcome, atomically and
mode 0600; read by `predict` (which model to use), `status` (global vs personal accuracy) and
the daemon's loop (whether the current global model was personalised already). Standard
library only: `edge-daemon status` and the daemon's loop read it without numpy or torch.

    {
      "format": "ticketfleet/edge-daemon-personal",
      "version": 1,
      "base": {"ticket_id": "<64 hex>", "run_id": 7, "server_round": 3, "final": false,
               "sha256": "<64 hex>"},  # the global model it was fine-tuned from
      "layers": "last",              # daemon.yaml personalise.layers when it ran
      "epochs": 20,
      "train_rows": 240,             # labelled readings fine-tuned on
      "held_out_rows": 60,           # labelled readings both models were scored on
      "global_accuracy": 0.70,       # null: not scored (too few held-out rows)
      "global_loss": 0.61,
      "personal_accuracy": 0.85,     # null: not fine-tuned
      "personal_loss": 0.40,
      "used": true,                  # predict uses the personal model (while base is current)
      "why": "...",                  # why it is used or not, for the owner
      "personal_sha256": "<64 hex>", # of the personal model's values; null when not kept
      "at": "2026-12-03T09:00:00+00:00"
    }

Nothing here is ever sent: the record and the personal model stay in the state directory.
"""

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_daemon.state import StateError
from ticket.atomic import atomic_write_text

if TYPE_CHECKING:
    from edge_daemon.model_store import ModelHeader

FORMAT = "ticketfleet/edge-daemon-personal"
VERSION = 1
_KEYS = {"format", "version", "base", "layers", "epochs", "train_rows", "held_out_rows"}
_KEYS |= {"global_accuracy", "global_loss", "personal_accuracy", "personal_loss"}
_KEYS |= {"used", "why", "personal_sha256", "at"}
_BASE_KEYS = ("ticket_id", "run_id", "server_round", "final", "sha256")
_SCORES = ("global_accuracy", "global_loss", "personal_accuracy", "personal_loss")


class PersonalRecordError(StateError):
    """personal.json exists but is not a record this version wrote."""


@dataclass(frozen=True)
class BaseModel:
    """The global model a personalisation started from (edge_daemon/model_store.py's header)."""

    ticket_id: str
    run_id: int
    server_round: int  # as model_store's header: with `final`, the last round aggregated
    final: bool  # the run's final model, pushed after its last round
    sha256: str  # of the global model's values: what tells one global model from another

    @classmethod
    def of(cls, header: "ModelHeader") -> "BaseModel":
        return cls(
            header.ticket_id, header.run_id, header.server_round, header.final, header.sha256
        )

    def is_base_of(self, header: "ModelHeader | None") -> bool:
        """Whether `header` is this very global model: same ticket and the same values. A
        personal model is never used over another global model, least of all another ticket's
        (whose mask its values are not even packed over)."""
        return (
            header is not None
            and header.ticket_id == self.ticket_id
            and header.sha256 == self.sha256
        )

    @property
    def after_round(self) -> int:
        """How many of the run's rounds are aggregated into it (ModelHeader.after_round)."""
        return self.server_round if self.final else max(0, self.server_round - 1)

    def describe(self) -> str:
        """E.g. "the final global model of run 7 (after round 3)", for the owner."""
        final = "final " if self.final else ""
        return f"the {final}global model of run {self.run_id} (after round {self.after_round})"


@dataclass(frozen=True)
class PersonalRecord:
    base: BaseModel
    layers: str  # "last" or "all"
    epochs: int
    train_rows: int
    held_out_rows: int
    global_accuracy: float | None  # on the held-out rows; None: not scored
    global_loss: float | None
    personal_accuracy: float | None  # None: no personal model was trained
    personal_loss: float | None
    used: bool  # predict uses the personal model while `base` is the current global model
    why: str  # why predict uses the personal model or not, for the owner
    personal_sha256: str | None  # of the personal model's values; None: none kept
    at: datetime  # timezone-aware

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "base": {key: getattr(self.base, key) for key in _BASE_KEYS},
            "layers": self.layers,
            "epochs": self.epochs,
            "train_rows": self.train_rows,
            "held_out_rows": self.held_out_rows,
            "global_accuracy": self.global_accuracy,
            "global_loss": self.global_loss,
            "personal_accuracy": self.personal_accuracy,
            "personal_loss": self.personal_loss,
            "used": self.used,
            "why": self.why,
            "personal_sha256": self.personal_sha256,
            "at": self.at.isoformat(timespec="seconds"),
        }

    @classmethod
    def from_json(cls, data: object) -> "PersonalRecord":
        """Strict inverse of `to_json`; ValueError names the first key that does not fit."""
        if not isinstance(data, dict) or set(data) != _KEYS:
            raise ValueError(f"expected an object with exactly the keys {sorted(_KEYS)}")
        if data["format"] != FORMAT or type(data["version"]) is not int:
            raise ValueError(f"format: expected {FORMAT!r} with an integer version")
        if data["version"] != VERSION:
            raise ValueError(f"version: this daemon reads {VERSION}, got {data['version']}")
        base = _base(data["base"])
        if data["layers"] not in ("last", "all"):
            raise ValueError('layers: expected "last" or "all"')
        for key in ("epochs", "train_rows", "held_out_rows"):
            if type(data[key]) is not int or data[key] < 0:
                raise ValueError(f"{key}: expected a whole number >= 0")
        for key in _SCORES:
            value = data[key]
            if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
                raise ValueError(f"{key}: expected a finite number or null")
        if not isinstance(data["used"], bool) or not isinstance(data["why"], str):
            raise ValueError("used: expected true or false; why: a string")
        digest = data["personal_sha256"]
        if not (digest is None or _is_hex_id(digest)) or (data["used"] and digest is None):
            raise ValueError("personal_sha256: expected 64 hex digits (null only when not used)")
        try:
            at = datetime.fromisoformat(data["at"]) if isinstance(data["at"], str) else None
        except ValueError:
            at = None
        if at is None or at.tzinfo is None:
            raise ValueError("at: expected an ISO 8601 time with a timezone")
        scores = {key: None if data[key] is None else float(data[key]) for key in _SCORES}
        return cls(
            base,
            data["layers"],
            data["epochs"],
            data["train_rows"],
            data["held_out_rows"],
            global_accuracy=scores["global_accuracy"],
            global_loss=scores["global_loss"],
            personal_accuracy=scores["personal_accuracy"],
            personal_loss=scores["personal_loss"],
            used=data["used"],
            why=data["why"],
            personal_sha256=digest,
            at=at,
        )


def _base(value: object) -> BaseModel:
    if (
        not isinstance(value, dict)
        or set(value) != set(_BASE_KEYS)
        or not _is_hex_id(value["ticket_id"])
        or not _is_hex_id(value["sha256"])
        or any(type(value[k]) is not int or value[k] < 0 for k in ("run_id", "server_round"))
        or type(value["final"]) is not bool
    ):
        raise ValueError("base: expected {ticket_id, run_id, server_round, final, sha256}")
    return BaseModel(
        value["ticket_id"], value["run_id"], value["server_round"], value["final"], value["sha256"]
    )


def _is_hex_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")


def load_record(path: Path) -> PersonalRecord | None:
    """The record in `path`; None when no personalisation ran yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise PersonalRecordError(f"{path}: cannot read: {error}") from None
    try:
        return PersonalRecord.from_json(json.loads(text))
    except ValueError as error:  # json.JSONDecodeError is a ValueError too
        raise PersonalRecordError(
            f"{path}: not a personalisation record ({error}); move it aside, or run "
            "`edge-daemon personalise` to write a fresh one"
        ) from None


def save_record(path: Path, record: PersonalRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps(record.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_text(path, text, mode=0o600)
