"""The pid file and stopping the process groups a killed fleet-server left behind."""

import subprocess
import sys
import time
from pathlib import Path

from server.processes import PidFile, Recorded, stop_groups

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
PARENT = (
    "import subprocess, sys, time; "
    f"subprocess.Popen([sys.executable, '-c', {STUBBORN!r}]); time.sleep(600)"
)


def test_a_dead_owners_groups_are_stopped_children_included(tmp_path: Path) -> None:
    leader = subprocess.Popen([sys.executable, "-c", PARENT], start_new_session=True)
    pid_file = PidFile(tmp_path / "fleet-server.pid")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    owner = Recorded("fleet-server", gone.pid, 0.0)  # killed: not alive
    pid_file.write(owner, [Recorded.of("superlink", leader.pid)])
    deadline = time.monotonic() + 20
    recorded_owner, groups = pid_file.read()
    while len(groups[0].group_members()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    leader.kill()  # the leader dies first, as a SuperLink killed with -9: its child stays
    leader.wait()
    assert len(groups[0].group_members()) == 1

    assert recorded_owner is not None and not recorded_owner.is_alive()
    assert stop_groups(groups, grace_s=0.5) == 1
    assert groups[0].group_members() == []


def test_a_torn_pid_file_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "fleet-server.pid"
    path.write_text('{"owner": {"label"')

    assert PidFile(path).read() == (None, [])
