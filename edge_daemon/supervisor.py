"""Keep one `flower-supernode` running while the device is eligible, and none while it is not.

`NodeSupervisor.tick(now)` is called by the daemon's loop; it never sleeps except while
stopping a node (SIGTERM, then SIGKILL after the grace period). The node runs in its own session
(process group), so stopping it also stops the SuperExec and any ClientApp it started. Any exit
of a wanted node, whatever its status (Flower exits 0 when the SuperLink forgets it), is followed
by a restart after a capped exponential backoff with jitter; a node that stayed up for
`STABLE_S` resets the backoff.
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

from edge_daemon.config import SupervisorConfig

logger = logging.getLogger(__name__)

STABLE_S = 60.0  # a node that ran this long before exiting restarts at the initial backoff


class Process(Protocol):
    """What the supervisor needs of a started node (subprocess.Popen satisfies it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


Launcher = Callable[[Sequence[str], Mapping[str, str], Path], Process]


def launch(argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Process:
    """Start `argv` in its own session, appending its output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = log_path.open("ab")
    try:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            start_new_session=True,  # a process group of its own: SuperExec and apps go with it
        )
    finally:
        log.close()  # the child holds its own descriptor


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # start_new_session=True: the group id is the pid


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

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

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
                self._exited(status, now)
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
        self.last_exit = status
        self.next_start = 0.0  # a stop on purpose is not a failure: start as soon as wanted

    def backoff_s(self) -> float:
        """Delay before the next restart: initial * 2^failures, capped, scaled by jitter."""
        base = min(
            self.config.backoff_max_s,
            self.config.backoff_initial_s * 2.0 ** max(self.failures - 1, 0),
        )
        jitter = self.config.jitter
        return base * self.rng.uniform(1 - jitter, 1 + jitter)

    def _start(self, now: float) -> None:
        self.process = self.launcher(self.argv, self.env, self.log_path)
        self.started_at = now
        self.starts += 1
        logger.info("started flower-supernode (pid %d)", self.process.pid)

    def _exited(self, status: int, now: float) -> None:
        ran = now - (self.started_at if self.started_at is not None else now)
        assert self.process is not None
        self.kill_group(self.process.pid, signal.SIGKILL)  # its SuperExec and ClientApp too
        self.process = None
        self.started_at = None
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
