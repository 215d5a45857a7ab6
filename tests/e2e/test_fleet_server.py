"""fleet-server end to end: init, run, enroll, deploy, train, kill -9, run again, and resume.

`fleet-server init` makes the state directory, a development CA and the fleet key; the ticket is
signed with that key. server.yaml names no ticket: `fleet-server run` (a subprocess, as an
operator starts it) serves TLS with node authentication and waits for one. Two devices are
enrolled with `fleet-server enroll`, a third is not; none holds the ticket until
`ticket deploy -c server.yaml` rolls it out, which makes it the active ticket, and the run
trains it. Once round 1 is checkpointed the fleet-server's process group gets SIGKILL; its
SuperLink, in a session of its own, dies with it (its watcher, ticket.process_guard); the second
`fleet-server run` restarts the SuperLink on the same database and resumes: rounds 1..N each
logged exactly once, and the unenrolled node never takes part. Every process here is started
watched, so a killed pytest leaves none of them running.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil
import pytest

from loopback.devices import prepare_devices
from server.superlink import free_port, is_listening
from tests.inprocess import find_ticket
from ticket import process_guard
from ticket.bundle import read_ticket

BIN = Path(sys.executable).parent
ROUNDS = 3


def _yaml(state: Path, port: int) -> str:
    return "\n".join(
        [
            f"state_dir: {json.dumps(str(state))}",
            "listen:",
            "  host: 127.0.0.1",
            f"  port: {port}",
            "run:",  # no ticket: the active one
            "  when_done: exit",  # a batch job: `run` ends once the rounds are done
            f"  num_rounds: {ROUNDS}",
            "  fraction_evaluate: 0.0",  # server-side evaluation scores the rounds
            "  min_nodes: 2",
            "  round_timeout_s: 30",
            "  server_eval: heart-uci",
            "",
        ]
    )


def _fleet_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleet-server"), *args], capture_output=True, text=True, timeout=180, check=False
    )


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return process_guard.spawn(command, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _online(config: Path) -> int:
    nodes = _fleet_server("nodes", "--json", "-c", str(config))
    if nodes.returncode != 0:
        return 0
    return sum(row["status"] == "online" for row in json.loads(nodes.stdout)["nodes"])


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def _stop_all(started: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every group started (last first), then SIGKILL what is left after 20 s each."""
    for popen in reversed(started):
        _kill_group(popen, signal.SIGTERM)
    for popen in started:
        with suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=20)
        _kill_group(popen, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_fleet_server_resumes_and_admits_only_enrolled_nodes(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    ticket = tmp_path / "heart.ticket"
    config = tmp_path / "server.yaml"
    config.write_text(_yaml(state, port))
    init = _fleet_server("init", "-c", str(config))
    assert init.returncode == 0, init.stderr
    find_ticket(ticket, density=0.1, sign_key=state / "keys" / "fleet.key")
    content_id = read_ticket(ticket, allow_unsigned=True).content_id
    run_dir = state / "runs" / f"main-{content_id[:12]}"
    devices = prepare_devices(
        tmp_path / "devices",
        hospitals=("Cleveland", "Hungary", "Switzerland"),
        ticket=None,  # it arrives with `ticket deploy`
        fleet_key=state / "keys" / "fleet.pub",
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in range(3)],
        root_certificates=state / "pki" / "ca.crt",
        node_auth=True,
    )
    run_command = [str(BIN / "fleet-server"), "run", "-c", str(config)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        first = _start(run_command, tmp_path / "first.log")
        started.append(first)
        _wait_for(lambda: is_listening("127.0.0.1", port), 120, "the SuperLink")
        for device in devices[:2]:  # Switzerland is not enrolled
            enrolled = _fleet_server("enroll", str(device.public_key), "--name", device.name,
                                     "-c", str(config))  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
        for index, device in enumerate(devices):
            daemon = [str(BIN / "edge-daemon"), "run", "-c", str(device.config)]
            started.append(_start(daemon, tmp_path / f"daemon-{index}.log"))
        _wait_for(lambda: _online(config) >= 2, 120, "two enrolled nodes online")
        assert "no ticket is active yet" in (tmp_path / "first.log").read_text()
        deploy = subprocess.run(
            [str(BIN / "ticket"), "deploy", str(ticket), "-c", str(config), "--timeout", "60"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        checkpoint = run_dir / "checkpoints" / "round-000001.ckpt"
        _wait_for(checkpoint.exists, 150, "round 1's checkpoint")
        superlinks = [
            p for p in psutil.Process(first.pid).children(recursive=True)
            if "flower-superlink" in " ".join(p.cmdline())
        ]  # fmt: skip
        assert superlinks
        _kill_group(first, signal.SIGKILL)  # the SuperLink has its own session, yet dies too
        first.wait(timeout=10)
        _wait_for(lambda: not any(_is_alive(p) for p in superlinks), 30, "the SuperLink's end")

        metrics_port = free_port()
        second = _start(
            [*run_command, "--metrics-port", str(metrics_port)], tmp_path / "second.log"
        )
        started.append(second)
        _wait_for(lambda: "submitted" in (tmp_path / "second.log").read_text(), 120, "the rerun")
        nodes = _fleet_server("nodes", "--json", "-c", str(config))
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()
        assert second.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()
    finally:
        _stop_all(started)

    second_log = (tmp_path / "second.log").read_text()
    assert "resuming" in second_log
    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == list(range(1, ROUNDS + 1))
    records = json.loads((state / "nodes.json").read_text())["nodes"]
    enrolled_ids = {str(record["node_id"]) for record in records}
    assert {record["name"] for record in records} == {"Cleveland", "Hungary"}
    for line in lines:
        assert line["participants"], line
        assert {str(node) for node in line["participants"]} <= enrolled_ids
        assert set(line["bytes"]["down"]) <= enrolled_ids  # Switzerland never got a message
    listed = json.loads(nodes.stdout)
    assert listed["superlink_running"] is True
    assert {row["name"] for row in listed["nodes"]} >= {"Cleveland", "Hungary"}
    assert "ticketfleet_rounds_planned 3.0" in metrics
    assert "ticketfleet_rounds_completed_total" in metrics
    assert (
        deploy.stdout.count("installed") >= 2
        and f"active ticket: {content_id[:12]}" in deploy.stdout
    )
    assert "training the active ticket" in (tmp_path / "first.log").read_text()
    for device in devices[:2]:
        assert (device.state_dir / "tickets" / f"{content_id}.ticket").exists()
    status = json.loads(_fleet_server("status", "--json", "-c", str(config)).stdout)
    assert status["run_dir"] == str(run_dir)
    assert status["last_round"] == ROUNDS and status["bytes_up_total"] > 0
    assert not (state / "fleet-server.pid").exists()
    assert not is_listening("127.0.0.1", port)
