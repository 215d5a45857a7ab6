"""ticket.atomic: atomic writes' neighbours — the instance lock of a state directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ticket.atomic import AlreadyRunningError, instance_lock


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    lock = tmp_path / "daemon.lock"

    with instance_lock(lock, pid=4242, program="edge-daemon"):
        assert lock.read_text() == "4242\n"
        # flock is per open file: a second open in this very process is a second instance.
        with (
            pytest.raises(AlreadyRunningError, match=r"another edge-daemon \(pid 4242\)"),
            instance_lock(lock, pid=99, program="edge-daemon"),
        ):
            pass
        assert lock.read_text() == "4242\n"  # the refused one wrote nothing

    with instance_lock(lock, pid=99, program="edge-daemon"):  # released on exit
        assert lock.read_text() == "99\n"


def test_a_killed_holder_leaves_a_file_that_blocks_nothing(tmp_path: Path) -> None:
    lock = tmp_path / "daemon.lock"
    holder = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from ticket.atomic import instance_lock\n"
        f"with instance_lock(Path({str(lock)!r}), pid=os.getpid(), program='x'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "held\n"
        with (
            pytest.raises(AlreadyRunningError, match=f"pid {child.pid}"),
            instance_lock(lock, pid=1, program="x"),
        ):
            pass
    finally:
        child.kill()  # SIGKILL: no cleanup runs in the holder
        child.wait()

    assert lock.read_text() == f"{child.pid}\n"  # stale content ...
    with instance_lock(lock, pid=7, program="x"):  # ... but the kernel dropped the lock
        assert lock.read_text() == "7\n"
