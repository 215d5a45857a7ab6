"""The pid file of `fleet-server run`: which processes it started, so a later run can tell a live
server from the leftovers of one that was killed with SIGKILL, and stop the leftovers.

state_dir/fleet-server.pid holds JSON: the fleet-server process and each process group it
started (the SuperLink, with its superexec and ServerApp; `flwr run --stream`), every pid with
its start time so that a recycled pid is never taken for ours.

Each of those trees also has a watcher (ticket.process_guard) that kills it as soon as the
fleet-server is gone, so after a kill -9 there are normally no leftovers to stop: the pid file
is the second line, for a platform without the watcher or a watcher that was killed too.
"""

import json
import os
import signal
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from ticket.atomic import atomic_write_text

_SAME_START_S = 0.01


@dataclass(frozen=True)
class Recorded:
    label: str
    pid: int
    create_time: float

    @classmethod
    def of(cls, label: str, pid: int) -> "Recorded":
        return cls(label, pid, psutil.Process(pid).create_time())

    def is_alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            same = abs(process.create_time() - self.create_time) < _SAME_START_S
            return same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def group_members(self) -> list[psutil.Process]:
        """Live processes in the group this process led (its session, start_new_session=True),
        the leader included if alive: a group outlives its leader, as do its members."""
        members = []
        for process in psutil.process_iter(["pid", "create_time"]):
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                started = process.info["create_time"]
                # Younger than the leader: not an older process that happens to share the id.
                is_ours = os.getpgid(process.pid) == self.pid and started >= self.create_time - 1.0
                if is_ours and process.status() != psutil.STATUS_ZOMBIE:
                    members.append(process)
        return members


class PidFile:
    """Written when `fleet-server run` starts each group, removed when it stops them."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> tuple[Recorded | None, list[Recorded]]:
        """(the fleet-server process, the groups it started); (None, []) without a file."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            owner = Recorded(**data["owner"])
            groups = [Recorded(**entry) for entry in data["groups"]]
        except FileNotFoundError:
            return None, []
        except (ValueError, KeyError, TypeError):
            return None, []  # a torn file from a crash: nothing we can trust to stop
        return owner, groups

    def write(self, owner: Recorded, groups: Sequence[Recorded]) -> None:
        document = {"owner": asdict(owner), "groups": [asdict(group) for group in groups]}
        atomic_write_text(self.path, json.dumps(document) + "\n", mode=0o600)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def stop_groups(groups: Sequence[Recorded], *, grace_s: float) -> int:
    """SIGTERM every live member of these groups, SIGKILL after `grace_s`; how many there were."""
    members = [member for group in groups for member in group.group_members()]
    for member in members:
        with suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=grace_s)
    for member in alive:
        with suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=5.0)
    deadline = time.monotonic() + 5.0
    while any(group.group_members() for group in groups) and time.monotonic() < deadline:
        time.sleep(0.1)  # children of init: reaped by init, not us
    return len(members)
