"""Keep one `flower-supernode` running while the device is eligible, and none while it is not.

`NodeSupervisor.tick(now)` is called by the daemon's loop; it never sleeps except while
stopping a node (SIGTERM, then SIGKILL after the grace period). The node runs in its own session
(process group), so stopping it also stops the SuperExec and any ClientApp it started. Any exit
of a wanted node, whatever its status (Flower exits 0 when the SuperLink forgets it), is followed
by a restart after a capped exponential backoff with jitter; a node that stayed up for
`STABLE_S` resets the backoff.

A daemon killed with SIGKILL cannot stop its node itself: the node's watcher
(ticket.process_guard) kills the node's whole tree once the daemon is gone. PR_SET_PDEATHSIG is
no substitute: it reaches the node only, never the SuperExec or the ClientApp under it. As a
second line (a platform without the watcher, a watcher killed too), the node's pid and start
time are recorded (status.json), and `stop_leftover` stops such a node when the daemon starts
again, before it starts a second one on the same port.
"""

import contextlib
import logging
import os
import random
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import psutil

from edge_daemon.config import SupervisorConfig
from ticket import process_guard

logger = logging.getLogger(__name__)

STABLE_S = 60.0  # a node that ran this long before exiting restarts at the initial backoff
SAME_START_S = 0.01  # create times of one process, read twice, agree to well within this


class Process(Protocol):
    """What the supervisor needs of a started node (subprocess.Popen satisfies it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


Launcher = Callable[[Sequence[str], Mapping[str, str], Path], Process]


def launch(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Process:
    """Start `argv` in its own session, appending its output to `log_path`; watched."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = log_path.open("ab")
    try:
        # A process group of its own, so SuperExec and apps go with it, and a watcher that kills
        # the whole tree if the daemon dies, SIGKILL included.
        return process_guard.spawn(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
        )
    finally:
        log.close()  # the child holds its own descriptor


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # start_new_session=True: the group id is the pid


def create_time(pid: int) -> float | None:
    """When process `pid` started (Unix seconds); None when it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def runs_command(process: psutil.Process, name: str) -> bool:
    """Whether `process` runs the program `name`, directly or as a script of an interpreter."""
    # A console script shows as [python, /venv/bin/flower-supernode, ...].
    return any(Path(part).name == name for part in process.cmdline()[:2])


@dataclass
class NodeSupervisor:
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    config: SupervisorConfig
    launcher: Launcher = launch
    kill_group: Callable[[int, signal.Signals], None] = signal_group
    rng: random.Random = field(default_factory=random.Random)
    wanted: bool = False
    process: Process | None = None
    started_at: float | None = None
    next_start: float = 0.0  # monotonic seconds; no start before this
    failures: int = 0  # consecutive short-lived runs, for the backoff
    starts: int = 0
    last_exit: int | None = None
    started_create_time: float | None = None  # the running node's, to recognise it later

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def command_name(self) -> str:
        return Path(self.argv[0]).name

    @property
    def running(self) -> bool:
        return self.process is not None

    def want(self, wanted: bool) -> None:
        self.wanted = wanted

    def tick(self, now: float) -> None:
        """Reap an exited node, start a wanted one when its backoff allows, stop an unwanted one."""
        if self.process is not None:
            status = self.process.poll()
            if status is not None:
                self._exited(self.process, status, now)
        if self.wanted and self.process is None and now >= self.next_start:
            self._start(now)
        elif not self.wanted and self.process is not None:
            self.stop()

    def stop(self) -> None:
        """SIGTERM the node's process group; SIGKILL it after the grace period. Idempotent."""
        process = self.process
        if process is None:
            return
        logger.info("stopping the node (pid %d)", process.pid)
        self.kill_group(process.pid, signal.SIGTERM)
        try:
            status = process.wait(timeout=self.config.grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("node did not stop in %.0f s: SIGKILL", self.config.grace_s)
            self.kill_group(process.pid, signal.SIGKILL)
            status = process.wait(timeout=30.0)
        # Children that outlived the node (a ClientApp mid-round) share its group.
        self.kill_group(process.pid, signal.SIGKILL)
        self.process = None
        self.started_at = None
        self.started_create_time = None
        self.last_exit = status
        self.next_start = 0.0  # a stop on purpose is not a failure: start as soon as wanted

    def stop_leftover(self, pid: int, started: float) -> bool:
        """Stop the process group of a node an earlier daemon left running; whether there was one.

        `pid` and `started` (its create time) are what that daemon recorded. A pid that is gone,
        was reused by a process started at another time, or runs another program is left alone.
        """
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started) > SAME_START_S:
                return False  # the pid was recycled: not ours
            if not runs_command(process, self.command_name):
                return False
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        logger.warning("stopping a node left running by an earlier daemon (pid %d)", pid)
        self.kill_group(pid, signal.SIGTERM)
        _, alive = psutil.wait_procs([process], timeout=self.config.grace_s)
        if alive:
            logger.warning("left-over node did not stop in %.0f s: SIGKILL", self.config.grace_s)
            self.kill_group(pid, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=30.0)
        self.kill_group(pid, signal.SIGKILL)  # its SuperExec and ClientApp, which share the group
        return True

    def backoff_s(self) -> float:
        """Delay before the next restart: initial * 2^failures scaled by jitter, then capped.

        The cap comes last, so no delay ever exceeds `backoff_max_s`.
        """
        # The exponent is bounded: 2.0 ** 1024 overflows, and a node refused forever (an
        # unregistered key) keeps failing for as long as the daemon runs.
        base = self.config.backoff_initial_s * 2.0 ** min(max(self.failures - 1, 0), 64)
        jitter = self.config.jitter
        return min(self.config.backoff_max_s, base * self.rng.uniform(1 - jitter, 1 + jitter))

    def _start(self, now: float) -> None:
        self.process = self.launcher(self.argv, self.env, self.log_path)
        self.started_at = now
        self.started_create_time = create_time(self.process.pid)
        self.starts += 1
        logger.info("started flower-supernode (pid %d)", self.process.pid)

    def _exited(self, process: Process, status: int, now: float) -> None:
        ran = now - (self.started_at if self.started_at is not None else now)
        self.kill_group(process.pid, signal.SIGKILL)  # its SuperExec and ClientApp too
        self.process = None
        self.started_at = None
        self.started_create_time = None
        self.last_exit = status
        self.failures = 1 if ran >= STABLE_S else self.failures + 1
        delay = self.backoff_s()
        self.next_start = now + delay
        logger.warning(
            "flower-supernode exited with status %d after %.0f s; restart in %.1f s",
            status,
            ran,
            delay,
        )
