"""`edge-daemon run`: probe the device, decide eligibility, supervise the Flower node.

One loop, one thread: every second the supervisor reaps or (re)starts the node; every
`eligibility.probe_interval_s` the device is probed and the hysteresis tracker decides whether a
node should run; every `RETENTION_EVERY_S` (and at start) the readings store's retention limits
are applied, since age limits lapse with no ingest. The loop writes `status.json` (what
`edge-daemon status` shows) atomically when the verdict, its reasons or the node change, and
refreshes the live numbers in it (a CPU share, a battery level) at most every
`STATUS_REFRESH_S`. While the device is eligible and no round is in flight, a new global model
is personalised on the device's own readings in a short-lived child process
(edge_daemon/personal_job.py). SIGTERM or SIGINT ends the loop and stops the node's whole
process group (and any personalisation) before the daemon exits; a node left running by a
daemon killed with SIGKILL is stopped when the next one starts. Nothing here imports torch: the
ClientApp, which trains, runs in its own process under the node, and personalisation in its own.
"""

import json
import logging
import math
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from edge_daemon.config import DaemonConfig
from edge_daemon.eligibility import Decision, EligibilityTracker
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_job import PersonalJob, clientapp_running, personalise_command
from edge_daemon.probe import FileProbe, Probe, PsutilProbe
from edge_daemon.readings import ReadingsStore, StoreError
from edge_daemon.supervisor import NodeSupervisor
from ticket import wire
from ticket.atomic import atomic_write_text, instance_lock
from ticket.config_text import toml_values

logger = logging.getLogger(__name__)

TICK_S = 1.0  # how often an exited node is noticed
RETENTION_EVERY_S = 3600.0  # how often expired readings are purged while the daemon runs
STATUS_REFRESH_S = 60.0  # live numbers alone rewrite status.json at most this often
_NUMBER = re.compile(r"\d+(\.\d+)?")


def node_config(config: DaemonConfig, paths: DaemonPaths) -> dict[str, bool | float | int | str]:
    """What the ClientApp reads from `context.node_config` (edge_daemon/client_app.py)."""
    values: dict[str, bool | float | int | str] = {
        wire.NODE_TICKET_DIR: str(paths.tickets_dir),
        wire.NODE_FLEET_KEY: str(config.fleet_key),
        wire.NODE_READINGS_DB: str(paths.readings_db),
        wire.NODE_READINGS_SCHEMA: config.data.schema,
        wire.NODE_STATE_PATH: str(paths.state_file),
        wire.NODE_MODEL_PATH: str(paths.model_file),
    }
    # The ClientApp applies retention again before it reads: nothing expired is trained on,
    # even between two of the daemon's hourly purges.
    if config.data.retention_rows is not None:
        values[wire.NODE_RETENTION_ROWS] = config.data.retention_rows
    if config.data.retention_days is not None:
        values[wire.NODE_RETENTION_DAYS] = config.data.retention_days
    if config.server.auth_key is not None:
        # The enrolled node key also signs this node's secure-aggregation key adverts, so its
        # neighbours can check them against the fleet's certificate of that key.
        values[wire.NODE_AUTH_KEY] = str(config.server.auth_key)
    return values


def supernode_command(config: DaemonConfig, paths: DaemonPaths) -> list[str]:
    server = config.server
    security = (
        ["--insecure"]
        if server.insecure
        else ["--root-certificates", str(server.root_certificates)]
    )
    if server.auth_key is not None:
        security += ["--auth-supernode-private-key", str(server.auth_key)]
    return [
        str(Path(sys.executable).parent / "flower-supernode"),
        *("--superlink", server.address),
        *security,
        *("--host", "127.0.0.1", "--port", str(config.node_port)),
        *("--node-config", toml_values(node_config(config, paths))),
    ]


def supernode_env(paths: DaemonPaths) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(paths.flwr_home),  # never the owner's ~/.flwr
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        # The SuperExec starts flwr-clientapp by name: the daemon's own environment's.
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@dataclass
class Daemon:
    config: DaemonConfig
    probe: Probe
    supervisor: NodeSupervisor
    clock: Callable[[], float] = time.monotonic
    personal: PersonalJob | None = None  # None: personalisation is off (personalise.enabled)

    def __post_init__(self) -> None:
        self.paths = DaemonPaths(self.config.state_dir)
        self.tracker = EligibilityTracker(self.config.eligibility)
        self.decision: Decision | None = None
        self.next_probe = 0.0
        self.next_retention = 0.0
        self._status: dict[str, Any] = {}
        self._status_written_at = -math.inf

    def step(self) -> None:
        """One turn of the loop: probe when due, then let the supervisor act."""
        now = self.clock()
        if now >= self.next_retention:
            self.apply_retention()
            self.next_retention = now + RETENTION_EVERY_S
        if now >= self.next_probe:
            self.decision = self.tracker.update(self.probe.snapshot(), now)
            self.next_probe = now + self.config.eligibility.probe_interval_s
            if self.decision.has_changed:
                state = "eligible" if self.decision.is_eligible else "not eligible"
                logger.info("device now %s: %s", state, "; ".join(self.decision.verdict.reasons))
            self.supervisor.want(self.decision.is_eligible)
        self.supervisor.tick(now)
        self.tick_personal(now)
        self.write_status()

    def tick_personal(self, now: float) -> None:
        """Personalise a new global model while the device may train (personal_job.py)."""
        if self.personal is not None:
            self.personal.tick(now, may_run=bool(self.decision and self.decision.is_eligible))

    def shutdown(self) -> None:
        self.supervisor.want(False)
        self.supervisor.stop()
        if self.personal is not None:
            self.personal.stop()
        self.write_status()

    def apply_retention(self) -> int:
        """Purge readings beyond `data.retention_*`; how many went. Never fatal to the loop."""
        data = self.config.data
        if data.retention_rows is None and data.retention_days is None:
            return 0
        if not self.paths.readings_db.exists():  # nothing ingested yet: create nothing
            return 0
        try:
            store = ReadingsStore(
                self.paths.readings_db,
                schema=data.schema,
                retention_rows=data.retention_rows,
                retention_days=data.retention_days,
            )
            with store:
                expired = store.apply_retention()
        except (StoreError, sqlite3.Error, OSError) as error:
            # The store is the owner's to fix (`edge-daemon ingest` names the problem); the
            # ClientApp refuses to train on it meanwhile.
            logger.warning("readings retention not applied: %s", error)
            return 0
        if expired:
            logger.info("retention: %d readings expired", expired)
        return expired

    def stop_leftover_node(self) -> bool:
        """Stop the node a daemon killed with SIGKILL left running; whether there was one."""
        recorded = recorded_node(self.paths.status_file)
        return recorded is not None and self.supervisor.stop_leftover(*recorded)

    def write_status(self) -> None:
        """Rewrite status.json when its verdict, reasons or node changed; live numbers alone
        (a CPU share, a battery level, the time pending) at most every STATUS_REFRESH_S."""
        now = self.clock()
        status = self._status_record()
        if status == self._status:
            return  # unchanged: no write, so an idle daemon does no disk I/O
        is_due = now - self._status_written_at >= STATUS_REFRESH_S
        if _status_key(status) == _status_key(self._status) and not is_due:
            return  # only numbers moved: a busy device must not fsync on every probe
        self._status = status
        self._status_written_at = now
        stamped = {**status, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write_text(self.paths.status_file, json.dumps(stamped, indent=2) + "\n")

    def _status_record(self) -> dict[str, Any]:
        supervisor = self.supervisor
        return {
            "eligible": bool(self.decision and self.decision.is_eligible),
            "reasons": self._reasons(),
            "node_running": supervisor.running,
            "node_pid": supervisor.pid,
            "node_create_time": supervisor.started_create_time,  # to recognise it after kill -9
            "node_starts": supervisor.starts,
            "node_last_exit": supervisor.last_exit,
        }

    def _reasons(self) -> list[str]:
        decision = self.decision
        if decision is None:
            return ["not probed yet"]
        reasons = list(decision.verdict.reasons)
        if decision.pending_s is not None:  # the verdict disagrees with the state, not yet long
            policy = self.config.eligibility
            held = f"{decision.pending_s:.0f}"
            if decision.is_eligible:
                reasons.append(f"not eligible for {held} s of off_after_s {policy.off_after_s:g} s")
            else:
                reasons.append(f"eligible for {held} s of on_after_s {policy.on_after_s:g} s")
        return reasons


def _status_key(status: dict[str, Any]) -> dict[str, Any]:
    """What status.json says, less its live numbers: a change here is written at once."""
    reasons = status.get("reasons", [])
    return {**status, "reasons": [_NUMBER.sub("#", reason) for reason in reasons]}


def recorded_node(status_file: Path) -> tuple[int, float] | None:
    """(pid, create time) of the node status.json says runs; None when it records none."""
    try:
        data = json.loads(status_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # no record (first start) or a damaged one: nothing to recognise
    if not isinstance(data, dict) or data.get("node_running") is not True:
        return None
    pid, started = data.get("node_pid"), data.get("node_create_time")
    if type(pid) is not int or pid <= 0 or not isinstance(started, float):
        return None
    return pid, started


def build_daemon(config: DaemonConfig, config_path: Path | None = None) -> Daemon:
    """The daemon of `config`; personalisation needs `config_path`, which its child reads."""
    paths = DaemonPaths(config.state_dir)
    for directory in (config.state_dir, paths.tickets_dir, paths.flwr_home, paths.logs_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    supervisor = NodeSupervisor(
        argv=supernode_command(config, paths),
        env=supernode_env(paths),
        log_path=paths.logs_dir / "supernode.log",
        config=config.supervisor,
    )
    probe: Probe = (
        FileProbe(config.probe_file)
        if config.probe_file is not None
        else PsutilProbe(config.eligibility.cpu_window_s, node_pid=lambda: supervisor.pid)
    )
    personal = None
    if config.personalise.enabled and config_path is not None:
        personal = PersonalJob(
            argv=personalise_command(config_path.absolute()),
            env=dict(os.environ),
            log_path=paths.logs_dir / "personalise.log",
            paths=paths,
            is_round_in_flight=lambda: clientapp_running(supervisor.pid),
        )
    return Daemon(config, probe, supervisor, personal=personal)


def run_daemon(
    config: DaemonConfig, *, config_path: Path | None = None, stop: threading.Event | None = None
) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); the node is stopped before returning."""
    stop = stop or threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    daemon = build_daemon(config, config_path)
    # Before anything touches the node: a second daemon on this state directory would take the
    # first one's node for a leftover and stop it.
    lock = DaemonPaths(config.state_dir).lock_file
    with instance_lock(lock, pid=os.getpid(), program="edge-daemon"):
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, request_stop) for sig in signals}
        logger.info(
            "edge daemon up: state in %s, server %s", config.state_dir, config.server.address
        )
        predictions = None
        if config.predict_socket:
            # Imported only when asked for; the endpoint's worker, not this process, predicts.
            from edge_daemon.predict_server import start_predict_server

            predictions = start_predict_server(
                config.state_dir,
                config.fleet_key,
                config.data.schema,
                use_personal=config.personalise.enabled,
            )
            logger.info("predictions served on %s", predictions.socket_path)
        try:
            daemon.stop_leftover_node()  # before a second node is started on the same port
            while not stop.is_set():
                daemon.step()
                stop.wait(TICK_S)
        finally:
            if predictions is not None:
                predictions.close()
            daemon.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0
