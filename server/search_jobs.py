"""Fleet searches queued for the running service: `fleet-server find` while `run` is up.

A fleet search needs the fleet's SuperLink, which the service holds. So when the service runs,
`fleet-server find` does not start a SuperLink of its own: it writes a job file into
`state_dir/jobs/` and follows it; the service picks the job up between rounds (the training
run stops after its round, as for a ticket switch), runs the search on the same SuperLink,
writes where it got to into the job's status file, and then resumes training. A killed search
resumes from its checkpoints when the service next runs the same job.

Job files are JSON written by the operator's own command into the 0700 state directory; they
are still read as untrusted documents (bounded, every field checked), because a damaged one
must fail that job with a message, never the service.
"""

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_text
from ticket.runconfig import RunConfigError, SearchSettings

FORMAT = 1
MAX_JOB_BYTES = 64 * 1024

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
FINISHED = (DONE, FAILED)


class JobError(Exception):
    """A job file that cannot be run as a fleet search."""


@dataclass(frozen=True)
class SearchRequest:
    """What `fleet-server find` asks the service to search."""

    name: str  # the search's run directory name: runs/NAME; also the job's file name
    ticket: Path  # the dense ticket to search in
    out: Path  # where the found ticket goes
    settings: SearchSettings
    plaintext: bool = False  # the operator's --plaintext: no secure aggregation
    submitted_at: str = ""

    def to_json(self) -> dict[str, Any]:
        settings = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(self.settings).items()
        }
        return {
            "format": FORMAT,
            "name": self.name,
            "ticket": str(self.ticket),
            "out": str(self.out),
            "settings": settings,
            "plaintext": self.plaintext,
            "submitted_at": self.submitted_at,
        }

    @classmethod
    def from_json(cls, document: Any, where: str) -> "SearchRequest":
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise JobError(f"{where}: not a format-{FORMAT} search job")
        try:
            name, ticket, out = document["name"], document["ticket"], document["out"]
            raw = document["settings"]
            plaintext = document.get("plaintext", False)
        except KeyError as error:
            raise JobError(f"{where}: missing {error.args[0]!r}") from None
        if not all(isinstance(value, str) and value for value in (name, ticket, out)):
            raise JobError(f"{where}: name, ticket and out must be non-empty strings")
        if not isinstance(plaintext, bool) or not isinstance(raw, dict):
            raise JobError(f"{where}: plaintext must be a boolean and settings an object")
        known = {spec.name: spec for spec in fields(SearchSettings)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise JobError(f"{where}: unknown search settings {unknown}")
        values: dict[str, Any] = {
            key: Path(value) if key == "search_out" and isinstance(value, str) else value
            for key, value in raw.items()
        }
        try:
            settings = SearchSettings(**values)
        except (RunConfigError, TypeError) as error:
            raise JobError(f"{where}: {error}") from None
        submitted = document.get("submitted_at", "")
        return cls(
            name,
            Path(ticket),
            Path(out),
            settings,
            plaintext,
            submitted if isinstance(submitted, str) else "",
        )


@dataclass(frozen=True)
class JobStatus:
    state: str  # queued, running, done, failed
    detail: str = ""
    updated_at: str = ""


class SearchQueue:
    """`state_dir/jobs/`: NAME.json (the request) and NAME.status.json (where it got to)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def submit(self, request: SearchRequest) -> Path:
        """Queue `request`; a job of the same name that has not finished is an error."""
        status = self.status(request.name)
        if status is not None and status.state not in FINISHED:
            raise JobError(
                f"a fleet search named {request.name} is already {status.state}; follow it with "
                "the same command, or pick another --name"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        stamped = SearchRequest(
            **{**vars(request), "submitted_at": datetime.now(UTC).isoformat(timespec="seconds")}
        )
        path = self._request_file(request.name)
        atomic_write_text(path, json.dumps(stamped.to_json(), indent=2) + "\n")
        self.set_status(request.name, QUEUED, "waiting for the service")
        return path

    def pending(self) -> list[str]:
        """Names of the jobs not finished, oldest submission first."""
        if not self.root.is_dir():
            return []
        names = []
        for path in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime):
            if path.name.endswith(".status.json"):
                continue
            name = path.name.removesuffix(".json")
            status = self.status(name)
            if status is None or status.state not in FINISHED:
                names.append(name)
        return names

    def request(self, name: str) -> SearchRequest:
        path = self._request_file(name)
        try:
            if path.stat().st_size > MAX_JOB_BYTES:
                raise JobError(f"{path}: over {MAX_JOB_BYTES} bytes")
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise JobError(f"{path}: unreadable: {error.strerror}") from None
        except ValueError as error:
            raise JobError(f"{path}: not JSON: {error}") from None
        request = SearchRequest.from_json(document, str(path))
        if request.name != name:
            raise JobError(f"{path}: names job {request.name!r}, not {name!r}")
        return request

    def status(self, name: str) -> JobStatus | None:
        try:
            document = json.loads(self._status_file(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or not isinstance(document.get("state"), str):
            return None
        detail, updated = document.get("detail", ""), document.get("updated_at", "")
        return JobStatus(
            document["state"],
            detail if isinstance(detail, str) else "",
            updated if isinstance(updated, str) else "",
        )

    def set_status(self, name: str, state: str, detail: str = "") -> None:
        document = {
            "state": state,
            "detail": detail,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._status_file(name), json.dumps(document) + "\n")

    def _request_file(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.json"

    def _status_file(self, name: str) -> Path:
        return self.root / f"{_checked(name)}.status.json"


def _checked(name: str) -> str:
    """A job name is a file name: no separators, no leading dot."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 120:
        raise JobError(f"job name {name!r}: use letters, digits, '-', '_' and '.' (not first)")
    return name
