"""The node supervisor against fake processes: start, stop, restart with backoff, escalation."""

import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil
import pytest

from edge_daemon.config import SupervisorConfig
from edge_daemon.supervisor import STABLE_S, NodeSupervisor, launch, signal_group
from tests.process_tree import (
    assert_tree_dies_with,
    start_launcher,
    write_fake_tree,
)

CONFIG = SupervisorConfig(grace_s=2.0, backoff_initial_s=1.0, backoff_max_s=8.0, jitter=0.0)


class FakeProcess:
    def __init__(self, pid: int, *, ignores_term: bool = False) -> None:
        self.pid = pid
        self.status: int | None = None
        self.ignores_term = ignores_term

    def poll(self) -> int | None:
        return self.status

    def wait(self, timeout: float | None = None) -> int:
        if self.status is None:
            raise subprocess.TimeoutExpired("node", timeout or 0)
        return self.status


class FakeWorld:
    """Launches FakeProcesses and records every group signal."""

    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []
        self.signals: list[tuple[int, signal.Signals]] = []
        self.ignores_term = False

    def launch(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> FakeProcess:
        process = FakeProcess(1000 + len(self.processes), ignores_term=self.ignores_term)
        self.processes.append(process)
        return process

    def kill_group(self, pid: int, sig: signal.Signals) -> None:
        self.signals.append((pid, sig))
        process = next(p for p in self.processes if p.pid == pid)
        if process.status is None and (sig == signal.SIGKILL or not process.ignores_term):
            process.status = -sig


def _supervisor(world: FakeWorld, config: SupervisorConfig = CONFIG) -> NodeSupervisor:
    return NodeSupervisor(
        argv=["flower-supernode"],
        env={},
        log_path=Path("/nonexistent/log"),
        config=config,
        launcher=world.launch,
        kill_group=world.kill_group,
        rng=random.Random(0),
    )


def test_a_node_runs_only_while_wanted() -> None:
    world = FakeWorld()
    supervisor = _supervisor(world)

    supervisor.tick(0.0)
    assert not supervisor.running and world.processes == []
    supervisor.want(True)
    supervisor.tick(1.0)
    assert supervisor.running and supervisor.pid == 1000
    supervisor.tick(2.0)
    assert len(world.processes) == 1  # already running: not started twice
    supervisor.want(False)
    supervisor.tick(3.0)
    assert not supervisor.running
    assert world.signals[0] == (1000, signal.SIGTERM)


def test_a_node_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    world = FakeWorld()
    world.ignores_term = True
    supervisor = _supervisor(world)
    supervisor.want(True)
    supervisor.tick(0.0)

    supervisor.stop()

    assert [sig for _, sig in world.signals][:2] == [signal.SIGTERM, signal.SIGKILL]
    assert world.processes[0].status == -signal.SIGKILL
    assert not supervisor.running


@pytest.mark.parametrize("status", [0, 1, -9])
def test_any_exit_of_a_wanted_node_is_restarted_with_growing_capped_backoff(status: int) -> None:
    world = FakeWorld()
    supervisor = _supervisor(world)
    supervisor.want(True)
    now = 0.0
    supervisor.tick(now)
    delays = []
    for _ in range(6):
        world.processes[-1].status = status  # dies at once: a crash loop
        supervisor.tick(now)
        assert not supervisor.running and supervisor.last_exit == status
        delays.append(supervisor.next_start - now)
        supervisor.tick(supervisor.next_start - 0.01)
        assert not supervisor.running  # still backing off
        now = supervisor.next_start
        supervisor.tick(now)
        assert supervisor.running
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert supervisor.starts == 7


def test_a_node_that_ran_stably_restarts_at_the_initial_backoff() -> None:
    world = FakeWorld()
    supervisor = _supervisor(world)
    supervisor.want(True)
    supervisor.tick(0.0)
    for now in (0.0, 1.0):  # two quick failures: backoff at 2 s
        world.processes[-1].status = 1
        supervisor.tick(now)
        supervisor.tick(supervisor.next_start)
    started = supervisor.next_start

    world.processes[-1].status = 0
    supervisor.tick(started + STABLE_S + 1)

    assert supervisor.next_start - (started + STABLE_S + 1) == 1.0


def test_jitter_scales_the_delay_within_its_bounds() -> None:
    world = FakeWorld()
    config = SupervisorConfig(grace_s=1.0, backoff_initial_s=10.0, backoff_max_s=10.0, jitter=0.2)
    supervisor = _supervisor(world, config)
    supervisor.failures = 1
    delays = {supervisor.backoff_s() for _ in range(50)}
    assert all(8.0 <= d <= 12.0 for d in delays) and len(delays) > 1


def test_stopping_a_real_node_stops_its_whole_process_group(tmp_path: Path) -> None:
    # A "node" whose child ignores SIGTERM, as a ClientApp mid-round might.
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {stubborn!r}])\n"
        "time.sleep(60)"
    )
    supervisor = NodeSupervisor(
        argv=[sys.executable, "-c", script],
        env={},
        log_path=tmp_path / "node.log",
        config=SupervisorConfig(grace_s=1.0),
    )
    supervisor.want(True)
    supervisor.tick(0.0)
    pid = supervisor.pid
    assert pid is not None
    deadline = time.monotonic() + 10
    while not psutil.Process(pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = psutil.Process(pid).children()[0]

    supervisor.want(False)
    supervisor.tick(1.0)

    assert not supervisor.running
    gone, alive = psutil.wait_procs([child], timeout=5)
    assert child in gone and alive == []
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_launch_and_signal_group_of_a_real_process(tmp_path: Path) -> None:
    process = launch([sys.executable, "-c", "print('hello', flush=True)"], {}, tmp_path / "l.log")
    assert process.wait(timeout=10) == 0
    assert (tmp_path / "l.log").read_text() == "hello\n"
    signal_group(process.pid, signal.SIGTERM)  # already gone: no error


def test_jitter_never_takes_a_delay_past_the_cap() -> None:
    world = FakeWorld()
    config = SupervisorConfig(grace_s=1.0, backoff_initial_s=1.0, backoff_max_s=8.0, jitter=0.5)
    supervisor = _supervisor(world, config)
    delays = []
    for failures in range(1, 12):
        supervisor.failures = failures
        delays += [supervisor.backoff_s() for _ in range(50)]

    assert max(delays) == 8.0  # capped after the jitter, not before it
    assert min(delays) >= 0.5 and len(set(delays)) > 100


def test_a_crash_loop_without_end_never_overflows_the_backoff() -> None:
    supervisor = _supervisor(FakeWorld())
    supervisor.failures = 5000  # a node refused for days (an unregistered key)

    assert supervisor.backoff_s() == CONFIG.backoff_max_s


def _fake_node(tmp_path: Path) -> Path:
    """A stand-in named flower-supernode: it starts a child in its group, as SuperExec is."""
    script = tmp_path / "flower-supernode"
    script.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    script.chmod(0o755)
    return script


def _with_child(pid: int) -> list[psutil.Process]:
    node = psutil.Process(pid)
    deadline = time.monotonic() + 10
    while not node.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [node, *node.children()]


def _gone(processes: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=5)
    return all(p.status() == psutil.STATUS_ZOMBIE for p in alive)  # reaped by nobody yet


def test_a_node_left_running_by_a_killed_daemon_is_stopped_with_its_group(
    tmp_path: Path,
) -> None:
    script = _fake_node(tmp_path)
    # What a daemon killed with SIGKILL leaves behind: its node, in a session of its own.
    leftover = launch([str(script)], {}, tmp_path / "node.log")
    processes = _with_child(leftover.pid)
    supervisor = NodeSupervisor(
        argv=[str(script)], env={}, log_path=tmp_path / "node.log", config=CONFIG
    )
    try:
        stopped = supervisor.stop_leftover(leftover.pid, processes[0].create_time())

        assert stopped
        assert len(processes) == 2 and _gone(processes)
    finally:
        signal_group(leftover.pid, signal.SIGKILL)
        leftover.wait(timeout=10)


def test_a_recycled_pid_or_another_program_is_left_alone(tmp_path: Path) -> None:
    script = _fake_node(tmp_path)
    node = launch([str(script)], {}, tmp_path / "node.log")
    other = launch(["sleep", "60"], {}, tmp_path / "sleep.log")
    supervisor = NodeSupervisor(
        argv=[str(script)], env={}, log_path=tmp_path / "node.log", config=CONFIG
    )
    try:
        started = psutil.Process(node.pid).create_time()
        # The recorded pid now belongs to a process started later: not the node we recorded.
        assert not supervisor.stop_leftover(node.pid, started + 5.0)
        # The pid and start time match, but the process runs another program.
        assert not supervisor.stop_leftover(other.pid, psutil.Process(other.pid).create_time())
        assert node.poll() is None and other.poll() is None
    finally:
        for process in (node, other):
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_a_daemon_killed_with_sigkill_leaves_no_node_process(tmp_path: Path) -> None:
    script, pids_file = write_fake_tree(tmp_path), tmp_path / "pids"
    daemon = start_launcher(  # the daemon's loop, cut to what starts the node
        "import sys, time\n"
        "from pathlib import Path\n"
        "from edge_daemon.config import SupervisorConfig\n"
        "from edge_daemon.supervisor import NodeSupervisor\n"
        f"node = NodeSupervisor([sys.executable, {str(script)!r}, {str(pids_file)!r}], {{}},\n"
        f"    Path({str(tmp_path / 'node.log')!r}), SupervisorConfig())\n"
        "node.want(True)\n"
        "node.tick(0.0)\n"
        "time.sleep(600)\n",
        tmp_path / "daemon.log",
    )
    assert_tree_dies_with(daemon, pids_file)
