"""Child process trees that die with the process that started them, SIGKILL included.

`spawn` starts a command in a session (process group) of its own, so an orderly stop signals
the whole group at once (os.killpg on the child's pid), and then starts a *watcher* for it: this
file run as a script by a plain `python -I -S`, detached (double fork, its own session), which
kills the child's whole tree as soon as the launcher is gone, however it went.

Why a watcher and not only PR_SET_PDEATHSIG on the child:
- the death signal reaches the child alone, never the grandchildren (flower-supernode's
  SuperExec and ClientApps, the SuperLink's SuperExec and ServerApp), and the SuperLink starts
  its SuperExec in a session of its own, out of reach of a group signal too;
- it fires when the *thread* that forked the child exits, not the process, so a child started
  from a worker thread would be killed while its launcher still runs;
- it needs a preexec_fn, which is unsafe in a process with threads.

The watcher holds a pidfd of the launcher (Linux >= 5.3; else it polls the launcher's start
time) and, every `REFRESH_S`, the pids and start times of the child's tree, followed through
/proc/PID/task/*/children, so descendants that left the group or were orphaned stay known. When
the launcher exits, or the tree's root exits (whatever the root started dies with it), it stops
every process of the tree (SIGSTOP, so none can fork any more), looks again, and SIGKILLs them
all. When the tree is gone it exits by itself. A pid is signalled only while its start time is
the one recorded, so a recycled pid is never hit.

Linux only (it reads /proc); elsewhere `spawn` starts the child without a watcher. Two gaps are
left: a launcher killed between starting the child and starting its watcher (about a
millisecond) orphans that child; and when the root exits on its own, a descendant that it
started less than `REFRESH_S` before and that left its group (a new session) is not yet known.
"""

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

REFRESH_S = 1.0  # how often a watcher re-reads its tree; the launcher's death is seen at once
_PROC = Path("/proc")
_WATCHER = Path(__file__).resolve()


class GuardError(RuntimeError):
    """The watcher of a child process could not be started."""


def is_supported() -> bool:
    return sys.platform.startswith("linux") and _PROC.is_dir()


def spawn(argv: Sequence[str], **popen_options: Any) -> "subprocess.Popen[bytes]":
    """`subprocess.Popen(argv, start_new_session=True, **popen_options)`, watched.

    The child's group id is its pid. The child's tree is killed when this process exits, and
    when the child itself exits. GuardError (the child killed first) if no watcher starts.
    """
    popen: subprocess.Popen[bytes] = subprocess.Popen(
        list(argv), start_new_session=True, **popen_options
    )
    if not is_supported():
        return popen
    try:
        watch(popen.pid)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    return popen


def watch(root: int) -> int | None:
    """Start the watcher of `root`'s tree (`root`: a child of this process); the watcher's pid,
    or None when `root` has already exited (a command that ends at once): nothing to watch."""
    started = start_time(root)
    if started is None:
        return None
    command = [sys.executable, "-I", "-S", str(_WATCHER), str(root), str(started), str(os.getpid())]
    helper = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # no terminal signal (Ctrl-C) reaches it
    )
    pipe = cast("IO[bytes]", helper.stdout)  # stdout=PIPE
    try:
        line = pipe.readline()  # the watcher's pid, once it watches
    finally:
        pipe.close()
        helper.wait()  # the intermediate process exits right after its fork
    if not line.strip().isdigit():
        raise GuardError(f"the watcher of pid {root} did not start (status {helper.returncode})")
    return int(line)


# -- /proc ---------------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The start time of a live process (clock ticks since boot); None if gone or a zombie."""
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split after the last.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 of proc(5), counting pid as 1


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children, over all its threads."""
    found: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def refresh(known: dict[int, int]) -> dict[int, int]:
    """`known` (pid -> start time) less the dead and recycled, plus every live descendant."""
    alive = {pid: started for pid, started in known.items() if start_time(pid) == started}
    frontier = list(alive)
    while frontier:
        for child in children(frontier.pop()):
            started = start_time(child)
            if child not in alive and started is not None:
                alive[child] = started
                frontier.append(child)
    return alive


def _signal(pid: int, started: int, sig: signal.Signals) -> None:
    if start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(known: dict[int, int]) -> None:
    """Freeze the tree (SIGSTOP stops it forking), until no new process shows; then SIGKILL."""
    stopped: dict[int, int] = {}
    for _ in range(20):  # a tree that keeps growing under SIGSTOP is not possible; bound anyway
        known = refresh({**known, **stopped})
        fresh = {pid: started for pid, started in known.items() if pid not in stopped}
        if not fresh:
            break
        for pid, started in fresh.items():
            _signal(pid, started, signal.SIGSTOP)
        stopped.update(fresh)
    for pid, started in {**known, **stopped}.items():
        _signal(pid, started, signal.SIGKILL)


# -- the watcher process -------------------------------------------------------------------------


def _parent_waiter(parent: int) -> "tuple[int | None, int | None]":
    """(a pidfd of `parent`, or None; its start time, for polling without a pidfd)."""
    try:
        return os.pidfd_open(parent), None
    except (AttributeError, OSError):
        return None, start_time(parent)


def _parent_gone(parent: int, pidfd: int | None, started: int | None, timeout_s: float) -> bool:
    if pidfd is not None:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(readable)  # a pidfd turns readable when its process has exited
    time.sleep(timeout_s)
    return start_time(parent) != started


def _watch(root: int, root_started: int, parent: int) -> None:
    pidfd, parent_started = _parent_waiter(parent)
    if os.getppid() != parent:  # the launcher died before we held it: kill at once
        kill_tree(refresh({root: root_started}))
        return
    if os.fork():
        os._exit(0)  # the launcher reaps this intermediate process; the watcher is reparented
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a group signal meant for the tree must not stop us
    os.write(1, f"{os.getpid()}\n".encode())
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # the launcher reads until EOF: close our end of its pipe
    os.close(devnull)
    known = {root: root_started}
    while True:
        known = refresh(known)
        if not known:
            return  # the whole tree exited: nothing left to guard
        if root not in known or _parent_gone(parent, pidfd, parent_started, REFRESH_S):
            kill_tree(known)
            return


if __name__ == "__main__":
    _watch(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
