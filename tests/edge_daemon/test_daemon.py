"""The daemon loop with a fake probe, clock and processes: eligibility drives the node."""

import json
import signal
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from edge_daemon.config import (
    DaemonConfig,
    DataConfig,
    PersonaliseConfig,
    ServerConfig,
    SupervisorConfig,
)
from edge_daemon.daemon import (
    RETENTION_EVERY_S,
    Daemon,
    build_daemon,
    node_config,
    run_daemon,
    supernode_command,
)
from edge_daemon.eligibility import EligibilityPolicy
from edge_daemon.model_store import save_model
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_job import SETTLE_S, PersonalJob
from edge_daemon.probe import DeviceSnapshot, NetworkState
from edge_daemon.readings import ReadingsStore
from edge_daemon.supervisor import NodeSupervisor, launch, signal_group
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
        self.battery_percent = 20.0

    def snapshot(self) -> DeviceSnapshot:
        return DeviceSnapshot(
            time=datetime(2026, 11, 25, 3, 0).astimezone(),
            on_power=self.on_power,
            battery_percent=self.battery_percent,
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
    # The same key signs the node's secure-aggregation adverts (edge_daemon/secagg_client.py).
    assert node_config(config, paths)["auth-key"] == str(tmp_path / "k")


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


class CountedWrites:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.texts: list[str] = []
        monkeypatch.setattr("edge_daemon.daemon.atomic_write_text", self)

    def __call__(self, path: Path, text: str) -> None:
        self.texts.append(text)
        path.write_text(text)


def test_status_says_how_long_the_on_delay_has_held(tmp_path: Path) -> None:
    daemon, _, _, clock = _daemon(tmp_path)

    _run_until(daemon, clock, 0.0)
    status = _status(daemon)

    assert status["eligible"] is False
    assert status["reasons"] == ["eligible for 0 s of on_after_s 10 s"]
    _run_until(daemon, clock, 11.0)
    assert _status(daemon)["reasons"] == []


def test_live_numbers_alone_rewrite_the_status_at_most_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = CountedWrites(monkeypatch)
    daemon, probe, _, clock = _daemon(tmp_path)
    probe.on_power = False

    while clock.now <= 30.0:  # the battery charges a little between every two probes
        probe.battery_percent = 10.0 + clock.now
        daemon.step()
        clock.now += 1.0

    assert len(writes.texts) == 1  # the first verdict; afterwards only the numbers moved
    assert "on battery 10%" in writes.texts[0]
    _run_until(daemon, clock, 61.0)
    assert len(writes.texts) == 2  # refreshed once the minute was up
    assert "on battery 40%" in writes.texts[1]
    probe.on_power = True  # the verdict itself changes: written at once
    _run_until(daemon, clock, 62.0)
    assert len(writes.texts) == 3 and "eligible for 0 s of on_after_s" in writes.texts[2]


def _ingest(store: ReadingsStore, path: Path, rows: list[str], *, at: float) -> None:
    from tests.edge_daemon.test_readings import HEADER

    path.write_text("\n".join([HEADER, *rows]) + "\n")
    store.ingest_csv(path, now=at)


def test_expired_readings_are_purged_at_start_and_then_hourly(tmp_path: Path) -> None:
    from tests.edge_daemon.test_readings import ROWS

    daemon, _, _, clock = _daemon(tmp_path)
    daemon.config = replace(daemon.config, data=DataConfig(retention_days=1.0))
    two_days_ago = time.time() - 2 * 86_400.0
    with ReadingsStore(daemon.paths.readings_db) as store:
        _ingest(store, tmp_path / "old.csv", ROWS, at=two_days_ago)
        _ingest(store, tmp_path / "new.csv", ROWS[:2], at=time.time())

    daemon.step()  # at start

    with ReadingsStore(daemon.paths.readings_db) as store:
        assert store.count() == 2
        _ingest(store, tmp_path / "late.csv", ROWS[2:], at=two_days_ago)  # expired already
    clock.now = RETENTION_EVERY_S - 1.0
    daemon.step()
    with ReadingsStore(daemon.paths.readings_db) as store:
        assert store.count() == 3  # not due yet
    clock.now = RETENTION_EVERY_S
    daemon.step()
    with ReadingsStore(daemon.paths.readings_db) as store:
        assert store.count() == 2


def test_the_node_config_carries_the_retention_limits(tmp_path: Path) -> None:
    config = _config(tmp_path, data=DataConfig(retention_rows=100, retention_days=30.0))

    values = node_config(config, DaemonPaths(config.state_dir))

    assert (values["retention-rows"], values["retention-days"]) == (100, 30.0)
    assert "retention-rows" not in node_config(_config(tmp_path), DaemonPaths(config.state_dir))


def test_a_node_left_running_by_a_daemon_killed_with_sigkill_is_stopped_at_start(
    tmp_path: Path,
) -> None:
    from tests.edge_daemon.test_supervisor import _fake_node, _gone, _with_child

    probe_file = tmp_path / "conditions.json"
    probe_file.write_text(json.dumps({"on_power": True, "network": "offline"}))
    config = _config(tmp_path, probe_file=probe_file)
    paths = DaemonPaths(config.state_dir)
    paths.state_dir.mkdir(parents=True)
    leftover = launch([str(_fake_node(tmp_path))], {}, tmp_path / "node.log")
    try:
        processes = _with_child(leftover.pid)
        paths.status_file.write_text(
            json.dumps(
                {
                    "eligible": True,
                    "reasons": [],
                    "node_running": True,
                    "node_pid": leftover.pid,
                    "node_create_time": processes[0].create_time(),
                    "node_starts": 1,
                    "node_last_exit": None,
                    "updated_at": "2025-06-01T12:00:00+00:00",
                }
            )
        )
        stop = threading.Event()
        timer = threading.Timer(1.5, stop.set)
        timer.start()

        assert run_daemon(config, stop=stop) == 0

        timer.join()
        assert _gone(processes)
        assert _status(build_daemon(config))["node_running"] is False
    finally:
        signal_group(leftover.pid, signal.SIGKILL)
        leftover.wait(timeout=10)


def test_the_node_config_names_where_the_global_model_is_kept(tmp_path: Path) -> None:
    config = _config(tmp_path)
    paths = DaemonPaths(config.state_dir)
    assert node_config(config, paths)["model-path"] == str(paths.model_file)


def test_predict_socket_is_served_while_the_daemon_runs_and_removed_after(
    tmp_path: Path,
) -> None:
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="tf-", dir="/tmp"))  # a Unix socket path is short
    try:
        probe_file = tmp_path / "conditions.json"
        probe_file.write_text(json.dumps({"on_power": True, "network": "offline"}))
        config = _config(short, probe_file=probe_file, predict_socket=True)
        socket_path = config.state_dir / "predict.sock"
        seen: list[bool] = []
        stop = threading.Event()

        def look_then_stop() -> None:
            seen.append(socket_path.is_socket())
            stop.set()

        timer = threading.Timer(1.5, look_then_stop)
        timer.start()
        assert run_daemon(config, stop=stop) == 0
        timer.join()
        assert seen == [True] and not socket_path.exists()
        assert _config(short).predict_socket is False  # off unless daemon.yaml asks
    finally:
        shutil.rmtree(short)


def _personalising_daemon(tmp_path: Path) -> tuple[Daemon, FakeProbe, FakeWorld, FakeWorld, Clock]:
    """The daemon of `_daemon` with a personalisation job whose children are fakes too."""
    daemon, probe, world, clock = _daemon(tmp_path)
    children = FakeWorld()
    daemon.personal = PersonalJob(
        argv=["personalise"],
        env={},
        log_path=tmp_path / "personalise.log",
        paths=daemon.paths,
        is_round_in_flight=lambda: False,
        launcher=children.launch,
        kill_group=children.kill_group,
    )
    return daemon, probe, world, children, clock


def test_a_new_global_model_is_personalised_only_while_the_device_is_eligible(
    tmp_path: Path,
) -> None:
    daemon, probe, _, children, clock = _personalising_daemon(tmp_path)
    save_model(
        daemon.paths.model_file,
        np.ones(4, np.float32),
        ticket_id="a" * 64,
        run_id=1,
        server_round=3,
        received_at=datetime.now().astimezone(),
    )
    probe.on_power = False  # on battery at 20%: not eligible

    _run_until(daemon, clock, 2 * SETTLE_S)
    assert children.processes == []
    probe.on_power = True
    _run_until(daemon, clock, clock.now + POLICY.on_after_s + 2)  # eligible after on_after_s

    assert len(children.processes) == 1
    daemon.shutdown()  # the child goes with the node
    assert children.processes[0].status == -signal.SIGKILL


def test_build_daemon_personalises_only_when_enabled_and_given_its_config_file(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    path = tmp_path / "daemon.yaml"

    personal = build_daemon(config, path).personal
    assert personal is not None and personal.argv[-4:] == ["--config", str(path), "--nice", "10"]
    assert build_daemon(config).personal is None
    off = replace(config, personalise=PersonaliseConfig(enabled=False))
    assert build_daemon(off, path).personal is None
