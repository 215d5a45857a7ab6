"""`edge-daemon run`: probe the device, decide eligibility, supervise the Flower node.

One loop, one thread: every second the supervisor reaps or (re)starts the node; every
`eligibility.probe_interval_s` the device is probed and the hysteresis tracker decides whether a
node should run. The loop writes `status.json` (what `edge-daemon status` shows) atomically
whenever something changed. SIGTERM or SIGINT ends the loop and stops the node's whole process
group before the daemon exits. Nothing here imports torch: the ClientApp, which trains, runs in
its own process under the node.
"""

import json
import logging
import os
import signal
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
from edge_daemon.probe import FileProbe, Probe, PsutilProbe
from edge_daemon.supervisor import NodeSupervisor
from ticket.atomic import atomic_write_text
from ticket.config_text import toml_values

logger = logging.getLogger(__name__)

TICK_S = 1.0  # how often an exited node is noticed


def node_config(config: DaemonConfig, paths: DaemonPaths) -> dict[str, bool | float | int | str]:
    """What the ClientApp reads from `context.node_config` (edge_daemon/client_app.py)."""
    return {
        "ticket-dir": str(paths.tickets_dir),
        "fleet-key": str(config.fleet_key),
        "readings-db": str(paths.readings_db),
        "readings-schema": config.data.schema,
        "state-path": str(paths.state_file),
    }


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

    def __post_init__(self) -> None:
        self.paths = DaemonPaths(self.config.state_dir)
        self.tracker = EligibilityTracker(self.config.eligibility)
        self.decision: Decision | None = None
        self.next_probe = 0.0
        self._status: dict[str, Any] = {}

    def step(self) -> None:
        """One turn of the loop: probe when due, then let the supervisor act."""
        now = self.clock()
        if now >= self.next_probe:
            self.decision = self.tracker.update(self.probe.snapshot(), now)
            self.next_probe = now + self.config.eligibility.probe_interval_s
            if self.decision.has_changed:
                state = "eligible" if self.decision.is_eligible else "not eligible"
                logger.info("device now %s: %s", state, "; ".join(self.decision.verdict.reasons))
            self.supervisor.want(self.decision.is_eligible)
        self.supervisor.tick(now)
        self.write_status()

    def shutdown(self) -> None:
        self.supervisor.want(False)
        self.supervisor.stop()
        self.write_status()

    def write_status(self) -> None:
        decision = self.decision
        status = {
            "eligible": bool(decision and decision.is_eligible),
            "reasons": list(decision.verdict.reasons) if decision else ["not probed yet"],
            "node_running": self.supervisor.running,
            "node_pid": self.supervisor.pid,
            "node_starts": self.supervisor.starts,
            "node_last_exit": self.supervisor.last_exit,
        }
        if status == self._status:
            return  # unchanged: no write, so an idle daemon does no disk I/O
        self._status = status
        stamped = {**status, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write_text(self.paths.status_file, json.dumps(stamped, indent=2) + "\n")


def build_daemon(config: DaemonConfig) -> Daemon:
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
    return Daemon(config, probe, supervisor)


def run_daemon(config: DaemonConfig, *, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop` is set); the node is stopped before returning."""
    stop = stop or threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    daemon = build_daemon(config)
    logger.info("edge daemon up: state in %s, server %s", config.state_dir, config.server.address)
    try:
        while not stop.is_set():
            daemon.step()
            stop.wait(TICK_S)
    finally:
        daemon.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
