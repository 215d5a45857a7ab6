"""The daemon loop with a fake probe, clock and processes: eligibility drives the node."""

import json
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from edge_daemon.config import DaemonConfig, ServerConfig, SupervisorConfig
from edge_daemon.daemon import Daemon, build_daemon, node_config, run_daemon, supernode_command
from edge_daemon.eligibility import EligibilityPolicy
from edge_daemon.paths import DaemonPaths
from edge_daemon.probe import DeviceSnapshot, NetworkState
from edge_daemon.supervisor import NodeSupervisor
from tests.edge_daemon.test_supervisor import FakeWorld

POLICY = EligibilityPolicy(on_after_s=10.0, off_after_s=5.0, probe_interval_s=1.0)


def _config(tmp_path: Path, **changes: object) -> DaemonConfig:
    config = DaemonConfig(
        state_dir=tmp_path / "state",
        fleet_key=tmp_path / "fleet.pub",
        server=ServerConfig(address="127.0.0.1:9092", insecure=True),
        eligibility=POLICY,
        supervisor=SupervisorConfig(grace_s=1.0, jitter=0.0),
    )
    return replace(config, **changes)  # type: ignore[arg-type]


class FakeProbe:
    def __init__(self) -> None:
        self.on_power = True

    def snapshot(self) -> DeviceSnapshot:
        return DeviceSnapshot(
            time=datetime(2026, 11, 25, 3, 0).astimezone(),
            on_power=self.on_power,
            battery_percent=20.0,
            cpu_busy_percent=5.0,
            free_memory_mb=4096.0,
            temperature_c=None,
            network=NetworkState("unmetered", "test"),
        )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _daemon(tmp_path: Path) -> tuple[Daemon, FakeProbe, FakeWorld, Clock]:
    config = _config(tmp_path)
    DaemonPaths(config.state_dir).state_dir.mkdir(parents=True)
    world, probe, clock = FakeWorld(), FakeProbe(), Clock()
    supervisor = NodeSupervisor(
        argv=["flower-supernode"],
        env={},
        log_path=tmp_path / "node.log",
        config=config.supervisor,
        launcher=world.launch,
        kill_group=world.kill_group,
    )
    return Daemon(config, probe, supervisor, clock=clock), probe, world, clock


def _run_until(daemon: Daemon, clock: Clock, until: float) -> None:
    while clock.now <= until:
        daemon.step()
        clock.now += 1.0


def _status(daemon: Daemon) -> dict[str, object]:
    return json.loads(daemon.paths.status_file.read_text())  # type: ignore[no-any-return]


def test_the_node_starts_after_the_device_stays_eligible_and_stops_when_it_lapses(
    tmp_path: Path,
) -> None:
    daemon, probe, world, clock = _daemon(tmp_path)

    _run_until(daemon, clock, 9.0)
    assert world.processes == []  # eligible, but not yet for on_after_s
    assert _status(daemon)["eligible"] is False
    _run_until(daemon, clock, 11.0)
    assert daemon.supervisor.running
    assert _status(daemon)["node_running"] is True

    probe.on_power = False  # unplugged: on battery at 20% < 50%
    _run_until(daemon, clock, 14.0)
    assert daemon.supervisor.running  # hysteresis: not before off_after_s
    _run_until(daemon, clock, 18.0)
    assert not daemon.supervisor.running
    status = _status(daemon)
    assert status["eligible"] is False and status["node_running"] is False
    assert any("power" in reason for reason in status["reasons"])  # type: ignore[attr-defined]


def test_a_node_that_dies_while_eligible_is_restarted(tmp_path: Path) -> None:
    daemon, _, world, clock = _daemon(tmp_path)
    _run_until(daemon, clock, 11.0)

    world.processes[-1].status = -9  # kill -9 of the node
    _run_until(daemon, clock, 14.0)

    assert len(world.processes) == 2 and daemon.supervisor.running
    assert _status(daemon)["node_last_exit"] == -9


def test_shutdown_stops_the_node(tmp_path: Path) -> None:
    daemon, _, world, clock = _daemon(tmp_path)
    _run_until(daemon, clock, 11.0)

    daemon.shutdown()

    assert world.processes[0].status is not None
    assert _status(daemon)["node_running"] is False


def test_the_supernode_command_carries_tls_auth_and_the_node_config(tmp_path: Path) -> None:
    server = ServerConfig(
        address="fleet:9092", root_certificates=tmp_path / "ca.pem", auth_key=tmp_path / "k"
    )
    config = _config(tmp_path, server=server, node_port=9200)
    paths = DaemonPaths(config.state_dir)

    command = supernode_command(config, paths)

    assert command[0].endswith("flower-supernode")
    text = " ".join(command)
    assert f"--root-certificates {tmp_path / 'ca.pem'}" in text
    assert f"--auth-supernode-private-key {tmp_path / 'k'}" in text
    assert "--insecure" not in command and "--port 9200" in text
    assert f'readings-db="{paths.readings_db}"' in command[-1]
    assert node_config(config, paths)["ticket-dir"] == str(paths.tickets_dir)


def test_run_daemon_stops_on_request_and_leaves_no_node(tmp_path: Path) -> None:
    probe_file = tmp_path / "conditions.json"
    probe_file.write_text(json.dumps({"on_power": True, "network": "offline"}))
    config = _config(tmp_path, probe_file=probe_file)
    stop = threading.Event()
    # Signal handlers can only be installed from the main thread: run it there, stop it here.
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    assert run_daemon(config, stop=stop) == 0
    timer.join()
    status = json.loads((config.state_dir / "status.json").read_text())
    assert status["eligible"] is False and status["node_running"] is False
    assert any("network" in reason for reason in status["reasons"])
    assert build_daemon(config).paths.logs_dir.is_dir()
