"""The fleet's nodes as the running service last listed them, for a fast `fleet-server nodes`.

Listing nodes means asking the SuperLink through the `flwr` CLI, whose start-up alone takes
seconds. The service does that in the background every REFRESH_S and writes what the SuperLink
said to `state_dir/nodes-online.json` (atomically, with the time); `fleet-server nodes` prints
the snapshot, with its age, while it is fresh, and asks the SuperLink itself otherwise or when
told `--live`. Light on purpose: no torch or flwr.
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_text

logger = logging.getLogger(__name__)

REFRESH_S = 30.0  # how often the service lists the nodes
FRESH_S = 3 * REFRESH_S  # a snapshot older than this is not shown: ask the SuperLink
SNAPSHOT_FILE = "nodes-online.json"


@dataclass(frozen=True)
class NodeSnapshot:
    at: datetime  # when the SuperLink was asked
    nodes: list[dict[str, Any]]  # `flwr supernode list --format json`'s "nodes"

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.at).total_seconds()


def write_snapshot(path: Path, nodes: Sequence[Mapping[str, Any]], at: datetime) -> None:
    document = {"at": at.isoformat(timespec="seconds"), "nodes": [dict(n) for n in nodes]}
    atomic_write_text(path, json.dumps(document) + "\n")


def read_snapshot(path: Path) -> NodeSnapshot | None:
    """The snapshot in `path`; None if there is none or it is not one (then ask instead)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        at = datetime.fromisoformat(document["at"])
        nodes = document["nodes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if at.tzinfo is None or not isinstance(nodes, list):
        return None
    if not all(isinstance(node, dict) for node in nodes):
        return None
    return NodeSnapshot(at, nodes)


class NodeRefresher:
    """A daemon thread that writes a snapshot of `list_nodes()` every `interval_s`."""

    def __init__(
        self,
        path: Path,
        list_nodes: Callable[[], list[dict[str, Any]]],
        *,
        interval_s: float = REFRESH_S,
    ) -> None:
        self.path = path
        self._list = list_nodes
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="node-snapshot", daemon=True)

    def __enter__(self) -> "NodeRefresher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval)
        self.path.unlink(missing_ok=True)  # the service is gone: its snapshot means nothing

    def refresh(self) -> None:
        started = time.monotonic()
        try:
            nodes = self._list()
        except Exception as error:  # the SuperLink restarting, a CLI hiccup: keep the last one
            logger.warning("cannot list the nodes for `fleet-server nodes`: %s", error)
            return
        write_snapshot(self.path, nodes, datetime.now(UTC))
        logger.debug("listed %d nodes in %.1f s", len(nodes), time.monotonic() - started)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self._interval)
