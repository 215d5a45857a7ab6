"""The fleet's deployment ledger: which ticket is active, and every rollout that made it so.

A ledger is a directory: `ledger.json` holds the events in order (written atomically, under a
lock, so two `ticket deploy` commands cannot lose each other's event), and
`tickets/<content id>.ticket` the bundle of every ticket ever rolled out, so a rollback needs
neither the registry nor the original file. `fleet-server` keeps its ledger at
`state_dir/deployments`; training runs with no explicit ticket train the active one.

What is active is derived from the events, never stored beside them: a successful deploy
pushes its ticket on the activation stack (unless it is on top already: deploying the active
ticket again, say to newly enrolled devices, activates nothing new), a successful rollback
pops the top (the ticket below becomes active again), and failed rollouts change nothing. So
`ticket rollback` twice goes two tickets back, as an operator undoing two deploys expects.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_bytes, atomic_write_text, locked

FORMAT = 1
DEPLOY = "deploy"
ROLLBACK = "rollback"
ACTIONS = (DEPLOY, ROLLBACK)


class LedgerError(Exception):
    """The ledger is unreadable or damaged, or the change asked for is impossible."""


@dataclass(frozen=True)
class Deployment:
    """One rollout as the ledger records it."""

    action: str  # deploy or rollback
    ticket_id: str
    at: str  # ISO 8601, UTC
    succeeded: bool
    counts: dict[str, int] = field(default_factory=dict)  # status -> devices
    canary: dict[str, Any] | None = None  # the canary's evaluation, when there was one
    # Every device's answer (node id, status, reason, canary): who installed it, who did not.
    nodes: list[dict[str, Any]] = field(default_factory=list)
    # Why a failed rollout failed ("no device connected: 2 enrolled, 0 online"); "" otherwise
    # and in events recorded before the field existed.
    reason: str = ""

    @classmethod
    def from_json(cls, document: Mapping[str, Any], where: str) -> "Deployment":
        try:
            event = cls(
                action=str(document["action"]),
                ticket_id=str(document["ticket_id"]),
                at=str(document["at"]),
                succeeded=bool(document["succeeded"]),
                counts={str(k): int(v) for k, v in dict(document.get("counts", {})).items()},
                canary=document.get("canary"),
                nodes=list(document.get("nodes", [])),
                reason=str(document.get("reason", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise LedgerError(f"{where}: not a deployment event ({error!r})") from None
        if event.action not in ACTIONS:
            raise LedgerError(f"{where}: action must be one of {ACTIONS}, got {event.action!r}")
        return event


class DeploymentLedger:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def file(self) -> Path:
        return self.root / "ledger.json"

    def bundle(self, ticket_id: str) -> Path:
        """Where the ledger keeps the bundle of `ticket_id` (present once it was rolled out)."""
        return self.root / "tickets" / f"{ticket_id}.ticket"

    def events(self) -> list[Deployment]:
        if not self.file.exists():
            return []
        try:
            document = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise LedgerError(f"{self.file}: unreadable: {error}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise LedgerError(f"{self.file}: not a format-{FORMAT} deployment ledger")
        events = document.get("events")
        if not isinstance(events, list):
            raise LedgerError(f"{self.file}: events must be a list")
        return [
            Deployment.from_json(event, f"{self.file}: events[{i}]")
            for i, event in enumerate(events)
        ]

    def history(self) -> list[str]:
        """The activation stack, oldest first: its last entry is the active ticket."""
        return activation_stack(self.events())

    def active(self) -> str | None:
        stack = self.history()
        return stack[-1] if stack else None

    def previous(self) -> str | None:
        """The ticket a rollback would make active again."""
        stack = self.history()
        return stack[-2] if len(stack) >= 2 else None

    def keep_bundle(self, ticket_id: str, data: bytes) -> Path:
        """Store a verified bundle before its rollout, so the ledger can always roll back."""
        path = self.bundle(ticket_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            atomic_write_bytes(path, data)
        return path

    def record(
        self,
        action: str,
        ticket_id: str,
        *,
        succeeded: bool,
        at: datetime,
        counts: Mapping[str, int] | None = None,
        canary: Mapping[str, Any] | None = None,
        nodes: Sequence[Mapping[str, Any]] = (),
        reason: str = "",
    ) -> Deployment:
        """Append one rollout's outcome; a successful rollback must undo the active ticket."""
        if action not in ACTIONS:
            raise LedgerError(f"action must be one of {ACTIONS}, got {action!r}")
        event = Deployment(
            action,
            ticket_id,
            at.isoformat(timespec="seconds"),
            succeeded,
            dict(counts or {}),
            None if canary is None else dict(canary),
            [dict(node) for node in nodes],
            reason,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.file):
            events = self.events()
            if action == ROLLBACK and succeeded:
                stack = activation_stack(events)
                if len(stack) < 2 or stack[-2] != ticket_id:
                    raise LedgerError(
                        f"{self.file}: the ticket before the active one is "
                        f"{stack[-2][:12] if len(stack) >= 2 else 'none'}, not {ticket_id[:12]}"
                    )
            events.append(event)
            document = {"format": FORMAT, "events": [asdict(e) for e in events]}
            atomic_write_text(self.file, json.dumps(document, indent=2, sort_keys=True) + "\n")
        return event


def activation_stack(events: list[Deployment]) -> list[str]:
    """Replay the events (module docstring): successful deploys push, rollbacks pop."""
    stack: list[str] = []
    for event in events:
        if not event.succeeded:
            continue
        if event.action == DEPLOY:
            if not stack or stack[-1] != event.ticket_id:  # a re-deploy is no new activation
                stack.append(event.ticket_id)
        elif stack:
            stack.pop()
    return stack
