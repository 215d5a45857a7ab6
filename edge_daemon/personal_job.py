"""The daemon's trigger for personalisation: one short-lived child process per new global model.

The daemon's loop calls `PersonalJob.tick(now, may_run=...)` every turn. When the stored global
model (model_store.py's header: its values' SHA-256) is one personal.json has no outcome for,
has stayed unchanged for `SETTLE_S` (a run sends a new one every round), the device is eligible
to train (`may_run`), and no round is in flight (no `flwr-clientapp` under the node), it starts
`python -m edge_daemon.personalise --config daemon.yaml --nice 10` in its own process group,
watched like the node (supervisor.launch), output appended to logs/personalise.log. The child
is reaped on a later turn; a failure is logged and never stops the daemon, and the same global
model is not tried again until the daemon restarts. A child is killed with its group when it
runs past `TIMEOUT_S` (that model is not tried again either), and when the device stops being
eligible or a round starts (it starts again, for whatever global model is stored then, once it
may). A new global model, a round's or the final one the server pushes after the run, has new
values and so a new SHA-256: it is personalised afresh, and `predict` never uses a personal
model with any global model but the one it was fine-tuned from.

Standard library and psutil only: the daemon's process never loads numpy's network code or
torch; the child does the training (edge_daemon/personalise.py).
"""

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from edge_daemon.model_store import ModelStoreError, read_header
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_record import PersonalRecordError, load_record
from edge_daemon.supervisor import Launcher, Process, launch, runs_command, signal_group
from ticket import process_guard

logger = logging.getLogger(__name__)

SETTLE_S = 60.0  # the global model unchanged this long before it is personalised
TIMEOUT_S = 900.0  # a child still running after this long is killed
NICE = 10  # the child's niceness increment: the device's own work comes first
CLIENTAPP = "flwr-clientapp"  # the process a SuperNode starts to handle a round's message


def personalise_command(config_path: Path) -> list[str]:
    return [
        sys.executable,
        *("-m", "edge_daemon.personalise"),
        *("--config", str(config_path)),
        *("--nice", str(NICE)),
    ]


def clientapp_running(node_pid: int | None) -> bool:
    """Whether the node has a ClientApp process, i.e. a round's message is being handled."""
    if node_pid is None:
        return False
    try:
        children = psutil.Process(node_pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    for child in children:
        try:
            if runs_command(child, CLIENTAPP):
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return False


@dataclass
class PersonalJob:
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    paths: DaemonPaths
    is_round_in_flight: Callable[[], bool]
    launcher: Launcher = launch
    kill_group: Callable[[int, signal.Signals], None] = signal_group
    process: Process | None = None
    started_at: float = 0.0
    runs: int = 0  # children started
    last_exit: int | None = None
    _running_sha: str | None = None  # the global model the running child personalises
    _attempted: set[str] = field(default_factory=set)  # global models tried by this daemon
    _seen: tuple[object, str | None] | None = None  # (model file's stat key, its SHA-256)
    _seen_since: float = 0.0

    def tick(self, now: float, *, may_run: bool) -> None:
        """Reap a finished child, stop one that must not run, start one when one is due."""
        if self.process is not None:
            self._watch(now, may_run=may_run)
        sha = self._global_sha(now)  # every turn (a stat): settling counts while ineligible too
        if self.process is not None or not may_run:
            return
        if sha is None or sha in self._attempted or now - self._seen_since < SETTLE_S:
            return
        if self._personalised_sha() == sha:
            self._attempted.add(sha)  # done already, by an earlier daemon or `personalise`
            return
        if not self.is_round_in_flight():
            self._start(sha, now)

    def _watch(self, now: float, *, may_run: bool) -> None:
        if self.process is None:
            return
        status = self.process.poll()
        if status is not None:
            self._reap(status)
        elif not may_run:
            logger.info("personalisation stopped: the device is no longer eligible")
            self.stop()
        elif self.is_round_in_flight():
            # The round's ClientApp comes first; its model is a new one, personalised later.
            logger.info("personalisation stopped: a round started")
            self.stop()
        elif now - self.started_at > TIMEOUT_S:
            logger.warning("personalisation ran past %.0f s: killed", TIMEOUT_S)
            if self._running_sha is not None:
                self._attempted.add(self._running_sha)  # it would only time out again
            self.stop()

    def _start(self, sha: str, now: float) -> None:
        try:
            self.process = self.launcher(self.argv, self.env, self.log_path)
        except (OSError, process_guard.GuardError) as error:
            self._attempted.add(sha)  # not every turn: the next global model tries again
            logger.warning("personalisation not started: %s", error)
            return
        self.started_at = now
        self._running_sha = sha
        self.runs += 1
        logger.info("personalising global model %s (pid %d)", sha[:12], self.process.pid)

    def stop(self) -> None:
        """Kill the running child's whole group; the model it was on may be tried again."""
        process = self.process
        if process is None:
            return
        self.kill_group(process.pid, signal.SIGKILL)  # it writes atomically: nothing torn
        self.last_exit = process.wait(timeout=30.0)
        self.process = None
        self._running_sha = None

    def _reap(self, status: int) -> None:
        process, sha = self.process, self._running_sha
        self.process, self._running_sha = None, None
        self.last_exit = status
        if process is not None:
            self.kill_group(process.pid, signal.SIGKILL)  # anything it left in its group
        if sha is not None:
            self._attempted.add(sha)  # once per global model, whatever came of it
        if status != 0:
            logger.warning(
                "personalisation failed with status %d; see %s. predict keeps its model",
                status,
                self.log_path,
            )
            return
        try:
            record = load_record(self.paths.personal_record_file)
        except PersonalRecordError as error:
            logger.warning("personalisation finished, but %s", error)
            return
        if record is not None:
            logger.info(
                "personalisation: %s (global %s, personal %s on %d held-out rows)",
                "personal model used" if record.used else "global model kept",
                _score(record.global_accuracy),
                _score(record.personal_accuracy),
                record.held_out_rows,
            )

    def _global_sha(self, now: float) -> str | None:
        """The stored global model's SHA-256, its header re-read only when the file changed."""
        file = self.paths.model_file
        try:
            stat = os.stat(file)
            key: object = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            key = None
        if self._seen is not None and self._seen[0] == key:
            return self._seen[1]
        sha = None
        if key is not None:
            try:
                sha = read_header(file).sha256
            except (OSError, ModelStoreError):
                sha = None  # predict reports a damaged model; nothing to personalise
        if self._seen is None or self._seen[1] != sha:
            self._seen_since = now
        self._seen = (key, sha)
        return sha

    def _personalised_sha(self) -> str | None:
        try:
            record = load_record(self.paths.personal_record_file)
        except PersonalRecordError:
            return None  # a damaged record is rewritten by the next personalisation
        return None if record is None else record.base.sha256


def _score(accuracy: float | None) -> str:
    return "not scored" if accuracy is None else f"{accuracy:.3f}"
