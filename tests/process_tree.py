"""Real process trees for the tests of launchers that are killed: a fake node, and the checks.

`FAKE_TREE` is a "node" that, like flower-superlink or flower-supernode, starts children: one in
a session of its own that ignores SIGTERM (as the SuperLink's SuperExec, out of reach of a group
signal), and one in its group that starts a grandchild (as SuperExec starting a ClientApp).
Every process appends its pid to the file named by its first argument once it runs.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TREE_SIZE = 4  # the node, its escaped child, its grouped child, and that one's child
FAKE_TREE = """
import os, signal, subprocess, sys, time
out = sys.argv[1]
with open(out, "a") as f:
    f.write(f"{os.getpid()}\\n")
role = sys.argv[2] if len(sys.argv) > 2 else "node"
if role == "escaped":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif role == "node":
    subprocess.Popen([sys.executable, __file__, out, "escaped"], start_new_session=True)
    subprocess.Popen([sys.executable, __file__, out, "grouped"])
elif role == "grouped":
    subprocess.Popen([sys.executable, __file__, out, "leaf"])
time.sleep(600)
"""


def write_fake_tree(directory: Path) -> Path:
    script = directory / "fake_tree.py"
    script.write_text(FAKE_TREE)
    return script


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_launcher(code: str, log: Path) -> "subprocess.Popen[bytes]":
    """Run `code` in a Python process of its own (the launcher the test kills)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=ROOT
        )


def wait_for_pids(path: Path, count: int, *, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(line) for line in path.read_text().split()]
            if len(pids) >= count:
                return pids
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {count} pids after {timeout_s:.0f} s")


def watchers_of(pids: Iterable[int]) -> list[int]:
    """The pids of the process_guard watchers watching any of `pids`."""
    wanted = {str(pid) for pid in pids}
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = process.info["cmdline"] or []
        if any(part.endswith("process_guard.py") for part in command) and wanted & set(command):
            found.append(process.info["pid"])
    return found


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def survivors(pids: Iterable[int], *, timeout_s: float = 15.0) -> list[int]:
    """The pids still alive (zombies count as dead) after waiting up to `timeout_s` for all."""
    pids = list(pids)
    deadline = time.monotonic() + timeout_s
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if is_alive(pid)]


def kill_all(pids: Iterable[int]) -> None:
    """Clean-up after a failed check, so a broken guard does not leak into other tests."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def assert_tree_dies_with(launcher: "subprocess.Popen[bytes]", pids_file: Path) -> None:
    """SIGKILL `launcher` once its fake tree (one watcher) runs; assert nothing survives it."""
    tree: list[int] = []
    try:
        tree = wait_for_pids(pids_file, TREE_SIZE)
        watchers = watchers_of(tree)
        assert len(watchers) == 1

        launcher.kill()
        launcher.wait(timeout=10)

        assert survivors([*tree, *watchers]) == []
    finally:
        launcher.kill()
        kill_all(tree)
