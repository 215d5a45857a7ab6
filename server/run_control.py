"""Asking a running ServerApp to stop at the end of its round.

`fleet-server run` and the ServerApp are separate processes (Flower starts the ServerApp) that
share the run directory. When the service must switch tickets it writes a stop request there;
the ServerApp reads it after each round's checkpoint (server/training_run.py) and ends the run
cleanly, so the round in flight is finished and kept rather than cut off and trained again.
Stopping the Flower run instead would lose that round's work. Light on purpose: no torch or
flwr, so the service loop imports it freely.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from ticket.atomic import atomic_write_text

STOP_REQUEST = "stop-request.json"


def request_stop(run_dir: Path, reason: str) -> None:
    """Ask the run in `run_dir` to stop after the round it is in (atomically: never torn)."""
    document = {"reason": reason, "requested_at": datetime.now(UTC).isoformat(timespec="seconds")}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / STOP_REQUEST, json.dumps(document) + "\n")


def stop_reason(run_dir: Path) -> str | None:
    """Why the run in `run_dir` was asked to stop; None if it was not.

    An unreadable request still stops the run: only `fleet-server run` writes the file, so a
    damaged one is a request all the same.
    """
    path = run_dir / STOP_REQUEST
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"{path} (unreadable)"
    reason = document.get("reason") if isinstance(document, dict) else None
    return reason if isinstance(reason, str) else str(path)


def clear_stop(run_dir: Path) -> None:
    """Withdraw a stop request, before the run in `run_dir` is started (again)."""
    (run_dir / STOP_REQUEST).unlink(missing_ok=True)
