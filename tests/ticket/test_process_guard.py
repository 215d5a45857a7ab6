"""Process trees that die with their launcher: real processes, real SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.process_tree import (
    TREE_SIZE,
    assert_tree_dies_with,
    kill_all,
    start_launcher,
    survivors,
    wait_for_pids,
    watchers_of,
    write_fake_tree,
)
from ticket import process_guard

pytestmark = pytest.mark.skipif(not process_guard.is_supported(), reason="needs Linux /proc")


def test_sigkill_of_the_launcher_kills_the_whole_tree_and_the_watcher(tmp_path: Path) -> None:
    script, pids_file = write_fake_tree(tmp_path), tmp_path / "pids"
    launcher = start_launcher(
        "import sys, time\n"
        "from ticket.process_guard import spawn\n"
        f"spawn([sys.executable, {str(script)!r}, {str(pids_file)!r}])\n"
        "time.sleep(600)\n",
        tmp_path / "launcher.log",
    )
    assert_tree_dies_with(launcher, pids_file)


def test_the_tree_dies_with_its_root_escaped_children_included(tmp_path: Path) -> None:
    script, pids_file = write_fake_tree(tmp_path), tmp_path / "pids"
    root = process_guard.spawn([sys.executable, str(script), str(pids_file)])
    tree: list[int] = []
    try:
        tree = wait_for_pids(pids_file, TREE_SIZE)
        watchers = watchers_of(tree)
        # Once the root is gone its orphans are found only if the watcher saw them before:
        # give it a few of its refreshes (the launcher's death needs none: it looks again).
        time.sleep(3 * process_guard.REFRESH_S)

        os.kill(root.pid, signal.SIGKILL)  # the root alone, as a SuperLink killed with -9
        root.wait(timeout=10)

        # Its escaped child is in no group of ours: only the watcher could have killed it.
        assert survivors([*tree, *watchers]) == []
    finally:
        kill_all(tree)


def test_a_watcher_exits_once_its_tree_has_exited() -> None:
    child = process_guard.spawn([sys.executable, "-c", "import time; time.sleep(0.5)"])
    watchers = watchers_of([child.pid])
    assert len(watchers) == 1

    assert child.wait(timeout=10) == 0

    assert survivors(watchers) == []


def test_the_child_leads_its_own_process_group(tmp_path: Path) -> None:
    child = process_guard.spawn(
        [sys.executable, "-c", "import os; print(os.getpgid(0), os.getsid(0))"],
        stdout=subprocess.PIPE,
    )
    out, _ = child.communicate(timeout=10)
    assert out.split() == [str(child.pid).encode()] * 2


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_guard.start_time(sleeper.pid)
        assert started is not None
        assert process_guard.refresh({sleeper.pid: started}) == {sleeper.pid: started}
        wrong = {sleeper.pid: started + 1}  # same pid, another start: another process
        assert process_guard.refresh(wrong) == {}

        process_guard.kill_tree(wrong)

        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_zombie_counts_as_gone() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    assert survivors([exited.pid]) == []  # exited, not yet reaped: a zombie

    assert process_guard.start_time(exited.pid) is None
    assert exited.wait(timeout=10) == 0


def test_a_child_that_exits_at_once_is_no_error() -> None:
    # `true` often exits before its watcher would start: then there is nothing to watch.
    children = [process_guard.spawn(["true"]) for _ in range(20)]
    assert [child.wait(timeout=10) for child in children] == [0] * 20
