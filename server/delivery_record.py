"""Who holds a run's final model: `<run-dir>/final-model.json`, read by the service (to send it
to the nodes that missed it) and by `fleet-server status`; light on purpose, no flwr or torch.

The record holds node ids, times and reasons only, never a value of the model.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_text

FILE = "final-model.json"
FORMAT = "ticketfleet/final-model"
VERSION = 1


class DeliveryRecordError(Exception):
    """final-model.json exists but is not a record this version wrote (message names it)."""


@dataclass
class DeliveryRecord:
    """Who holds a run's final model: node id -> when it was kept, or why it was refused; the
    nodes that did not answer are absent from both and asked again at the next delivery."""

    ticket_id: str
    server_round: int
    kept: dict[int, str] = field(default_factory=dict)  # node id -> ISO time
    refused: dict[int, str] = field(default_factory=dict)  # node id -> the node's reason
    silent: list[int] = field(default_factory=list)  # asked last time, no answer

    def settled(self) -> set[int]:
        """Nodes never to ask again for this model."""
        return set(self.kept) | set(self.refused)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "ticket_id": self.ticket_id,
            "server_round": self.server_round,
            "kept": {str(node): at for node, at in sorted(self.kept.items())},
            "refused": {str(node): why for node, why in sorted(self.refused.items())},
            "silent": sorted(self.silent),
        }

    @classmethod
    def from_json(cls, data: object, path: Path) -> "DeliveryRecord":
        keys = {"format", "version", "ticket_id", "server_round", "kept", "refused", "silent"}
        if not isinstance(data, dict) or set(data) != keys:
            raise DeliveryRecordError(f"{path}: expected an object with the keys {sorted(keys)}")
        if (data["format"], data["version"]) != (FORMAT, VERSION):
            raise DeliveryRecordError(f"{path}: expected format {FORMAT!r} version {VERSION}")
        try:
            return cls(
                str(data["ticket_id"]),
                int(data["server_round"]),
                {int(node): str(at) for node, at in dict(data["kept"]).items()},
                {int(node): str(why) for node, why in dict(data["refused"]).items()},
                [int(node) for node in data["silent"]],
            )
        except (TypeError, ValueError) as error:
            raise DeliveryRecordError(f"{path}: {error}") from None


def load_record(run_dir: Path) -> DeliveryRecord | None:
    """The run's delivery record; None when no final model was pushed yet."""
    path = Path(run_dir) / FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DeliveryRecordError(f"{path}: cannot read: {error}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise DeliveryRecordError(f"{path}: not JSON ({error})") from None
    return DeliveryRecord.from_json(data, path)


def write_record(run_dir: Path, record: DeliveryRecord) -> Path:
    path = Path(run_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def nodes_missing(record: DeliveryRecord | None, online: Iterable[int]) -> list[int]:
    """Online nodes that should still be sent the final model."""
    if record is None:
        return []
    return sorted(set(online) - record.settled())
