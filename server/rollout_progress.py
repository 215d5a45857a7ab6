"""A rollout's progress file, `<run-dir>/deploy-progress.jsonl`: one JSON line per device's ack
({"node_id", "status", "reason", "canary"}, server/rollout.py's Ack), appended as the acks
arrive, so `ticket deploy` can print each device while the run is still going. deploy.json
stays the outcome; this file is only progress.

Append-only with one write per line: a reader that keeps only complete lines never sees a
torn one. No Flower import here: `ticket deploy` reads it through server/api.py.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROGRESS_FILE = "deploy-progress.jsonl"
NO_DEVICE = "no device connected"  # deploy.json's reason when the grid had no node at all


class ProgressLog:
    """The writer: the rollout ServerApp's."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE

    def start(self) -> None:
        """An empty file: a rerun in the same run directory does not show old acks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")

    def append(self, ack: Mapping[str, Any]) -> None:
        line = (json.dumps(dict(ack), sort_keys=True) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)  # one write: O_APPEND keeps it whole
        finally:
            os.close(descriptor)


def read_progress(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The acks written after byte `offset`, and the offset to read on from; a line still
    being written (no newline yet) waits for the next call. A missing file: none yet."""
    try:
        with open(path, "rb") as source:
            source.seek(offset)
            data = source.read()
    except FileNotFoundError:
        return [], offset
    complete = data.rfind(b"\n") + 1
    acks = []
    for line in data[:complete].splitlines():
        try:
            ack = json.loads(line)
        except ValueError:
            continue  # not ours to interpret: progress is advisory, deploy.json decides
        if isinstance(ack, dict):
            acks.append(ack)
    return acks, offset + complete
