"""fleet-server end to end, as an operator runs it: the service follows the fleet's deployments.

`fleet-server init` makes the state directory, a development CA and the fleet key; tickets A
and B are signed with that key. server.yaml names no ticket: `fleet-server run` (a subprocess,
as systemd starts it) serves TLS with node authentication and waits. Two devices are enrolled
with `fleet-server enroll`, a third is not. `ticket deploy A` makes A active and the service
starts training it by itself; `ticket deploy B` while A trains makes the service finish A's
round and train B in a run directory of its own, the SuperLink never restarted. Once B's round
1 is checkpointed the service's process group gets SIGKILL; its SuperLink, in a session of its
own, dies with it (its watcher, ticket.process_guard); the second `fleet-server run` restarts
the SuperLink on the same database and resumes B after its last round. `ticket rollback` makes
A active again and A resumes where it stopped. Every round is logged exactly once, naming its
ticket, and the unenrolled node never takes part. Last, `fleet-server find` while A trains
queues its search for the service, which runs it between A's rounds on the same SuperLink.
Then one device freezes (SIGSTOP on its node's process group: a device too slow to answer, still
online as far as the SuperLink knows): A's next round closes at its reporting deadline with the
other device's update instead of waiting for the slow one. Every process here is started
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
from loopback.launcher import flower_name
from server.superlink import free_port, is_listening
from tests.inprocess import find_ticket
from ticket import process_guard
from ticket.bundle import read_ticket

BIN = Path(sys.executable).parent
ROUNDS = 40  # more than the test waits for: the service is still training when it ends
DEADLINE_S = 15


def _yaml(state: Path, port: int) -> str:
    return "\n".join(
        [
            f"state_dir: {json.dumps(str(state))}",
            "listen:",
            "  host: 127.0.0.1",
            f"  port: {port}",
            "run:",  # no ticket: the active one
            f"  num_rounds: {ROUNDS}",
            "  fraction_evaluate: 0.0",  # server-side evaluation scores the rounds
            "  min_nodes: 2",
            "  round_timeout_s: 30",
            "  round_goal: 2",  # both enrolled devices, or what arrived by the deadline
            f"  round_deadline_s: {DEADLINE_S}",
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
    nodes = _fleet_server("nodes", "--json", "--live", "-c", str(config))
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
def test_the_service_follows_deploys_and_rollbacks_and_resumes_after_kill_9(
    tmp_path: Path,
) -> None:
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "server.yaml"
    config.write_text(_yaml(state, port))
    init = _fleet_server("init", "-c", str(config))
    assert init.returncode == 0, init.stderr
    fleet_key = state / "keys" / "fleet.key"
    tickets = {
        name: find_ticket(tmp_path / f"{name}.ticket", density=density, sign_key=fleet_key)
        for name, density in (("A", 0.1), ("B", 0.2))
    }
    ids = {
        name: read_ticket(path, allow_unsigned=True).content_id for name, path in tickets.items()
    }
    run_dirs = {name: state / "runs" / f"main-{ids[name][:12]}" for name in ids}
    dense, found = tmp_path / "dense.ticket", tmp_path / "found.ticket"
    made = subprocess.run(
        [str(BIN / "ticket"), "init", "--model", "heart-mlp", "--data", "heart-uci",
         "--out", str(dense), "--sign-key", str(fleet_key)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    devices = prepare_devices(
        tmp_path / "devices",
        hospitals=("Cleveland", "Hungary", "Switzerland"),
        ticket=None,  # tickets arrive with `ticket deploy`
        fleet_key=state / "keys" / "fleet.pub",
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in range(3)],
        root_certificates=state / "pki" / "ca.crt",
        node_auth=True,
    )
    run_command = [str(BIN / "fleet-server"), "run", "-c", str(config)]
    started: list[subprocess.Popen[bytes]] = []
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    def deploy(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "ticket"), *args, "-c", str(config), "--timeout", "60"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def checkpoint(name: str, server_round: int) -> Path:
        return run_dirs[name] / "checkpoints" / f"round-{server_round:06d}.ckpt"

    try:
        first = _start(run_command, first_log)
        started.append(first)
        _wait_for(lambda: is_listening("127.0.0.1", port), 120, "the SuperLink")
        superlink = _superlink_of(first)
        for device in devices[:2]:  # Switzerland is not enrolled
            enrolled = _fleet_server("enroll", str(device.public_key), "--name", device.name,
                                     "-c", str(config))  # fmt: skip
            assert enrolled.returncode == 0, enrolled.stderr
        for index, device in enumerate(devices):
            daemon = [str(BIN / "edge-daemon"), "run", "-c", str(device.config)]
            started.append(_start(daemon, tmp_path / f"daemon-{index}.log"))
        _wait_for(lambda: _online(config) >= 2, 120, "two enrolled nodes online")
        assert "no ticket is active yet" in first_log.read_text()

        deployed_a = deploy("deploy", str(tickets["A"]))
        _wait_for(checkpoint("A", 1).exists, 150, "A's round 1, started by the service itself")
        deploy("deploy", str(tickets["B"]))  # while A trains
        _wait_for(checkpoint("B", 1).exists, 150, "B's round 1")
        assert _superlink_of(first) == superlink  # one SuperLink all along
        assert is_listening("127.0.0.1", port)
        a_rounds = _logged(run_dirs["A"])
        assert "is now active: round" in first_log.read_text()

        _kill_group(first, signal.SIGKILL)  # mid-round of B; the SuperLink dies with it
        first.wait(timeout=10)
        _wait_for(lambda: not _is_alive(superlink), 30, "the SuperLink's end")
        b_before = _logged(run_dirs["B"])

        metrics_port = free_port()
        second = _start([*run_command, "--metrics-port", str(metrics_port)], second_log)
        started.append(second)
        _wait_for(lambda: f"resuming {run_dirs['B']}" in second_log.read_text(), 120, "B resumed")
        superlink_after_restart = _superlink_of(second)
        _wait_for(checkpoint("B", max(b_before) + 1).exists, 150, "B's round after the kill")
        status = json.loads(_fleet_server("status", "--json", "-c", str(config)).stdout)
        nodes = _fleet_server("nodes", "--json", "-c", str(config))
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            metrics = response.read().decode()

        rollback = deploy("rollback")
        next_a = max(_logged(run_dirs["A"])) + 1
        _wait_for(checkpoint("A", next_a).exists, 150, "A's round after the rollback")

        # A fleet search while A trains goes to the service: no second SuperLink.
        search = subprocess.run(
            [str(BIN / "fleet-server"), "find", str(dense), "--out", str(found), "-c", str(config),
             "--method", "fed-oneshot", "--rounds-per-level", "1", "--target-density", "0.5",
             "--plaintext"],
            capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip
        assert search.returncode == 0, search.stdout + search.stderr
        after_search = max(_logged(run_dirs["A"])) + 1
        _wait_for(checkpoint("A", after_search).exists, 150, "A's round after the search")
        assert _superlink_of(second) == superlink_after_restart
        text_status = _fleet_server("status", "-c", str(config)).stdout

        frozen = _node_group(started[1])  # Cleveland's daemon's node: it stops answering
        os.killpg(frozen, signal.SIGSTOP)
        try:
            slow_round = max(_logged(run_dirs["A"])) + 1
            _wait_for(checkpoint("A", slow_round).exists, 150, "A's round with a slow device")
        finally:
            os.killpg(frozen, signal.SIGCONT)
    finally:
        _stop_all(started)

    lines = {name: _lines(run_dirs[name]) for name in run_dirs}
    for name, logged in lines.items():  # each round exactly once, naming its ticket
        assert [line["round"] for line in logged] == list(range(1, len(logged) + 1)), name
        assert {line["ticket"] for line in logged} == {ids[name]}, name
    assert a_rounds == list(range(1, len(a_rounds) + 1)) and len(lines["A"]) > len(a_rounds)
    records = json.loads((state / "nodes.json").read_text())["nodes"]
    enrolled_ids = {str(record["node_id"]) for record in records}
    assert {record["name"] for record in records} == {"Cleveland", "Hungary"}
    for line in [*lines["A"], *lines["B"]]:
        assert {str(node) for node in line["participants"]} <= enrolled_ids
        assert set(line["bytes"]["down"]) <= enrolled_ids  # Switzerland never got a message
        if not line["participants"]:  # a round that met a rollout on the devices may time out
            assert all(
                why.startswith("no reply before the round") for why in line["failures"].values()
            ), line
    for name, logged in lines.items():
        assert sum(bool(line["participants"]) for line in logged) >= len(logged) - 2, name

    # The slow device held its round no longer than the deadline: the round went on without it.
    slow = next(line for line in lines["A"] if line["round"] == slow_round)
    assert slow["closed"] == "deadline", slow
    assert len(slow["participants"]) == 1 and len(slow["failures"]) == 1, slow
    assert DEADLINE_S <= slow["wall_s"] < 30  # 30: the round timeout it did not wait for

    assert status["service"]["alive"] and status["service"]["phase"] == "training"
    assert status["active_ticket"] == ids["B"] and status["run_dir"] == str(run_dirs["B"])
    segments = [(seg["ticket"], seg["outcome"]) for seg in status["service"]["segments"]]
    assert segments[:2] == [
        (ids["A"], f"switched: ticket {ids['B'][:12]} is now active"),
        (ids["B"], "interrupted: the service stopped"),
    ]
    assert segments[2] == (ids["B"], None)  # training B again after the restart
    assert "service: training" in text_status and ids["A"][:12] in text_status
    listed = json.loads(nodes.stdout)
    assert listed["superlink_running"] is True
    assert listed["as_of"] is not None  # the running service's list: no flwr CLI started
    assert {row["name"] for row in listed["nodes"]} >= {"Cleveland", "Hungary"}
    assert f"ticketfleet_rounds_planned {float(ROUNDS)}" in metrics
    assert "ticketfleet_rounds_completed_total" in metrics
    assert deployed_a.stdout.count("installed") >= 2
    assert f"active ticket: {ids['A'][:12]}" in deployed_a.stdout
    assert ids["A"][:12] in rollback.stdout
    for device in devices[:2]:
        for content_id in ids.values():
            assert (device.state_dir / "tickets" / f"{content_id}.ticket").exists()
    assert "queued fleet search find-found for the running service" in search.stdout
    found_ticket = read_ticket(found, trusted_keys=[(state / "keys" / "fleet.pub").read_bytes()])
    assert found_ticket.manifest.fleet is not None and found_ticket.manifest.fleet.devices == 2
    assert "fleet search find-found" in second_log.read_text()
    assert not (state / "fleet-server.pid").exists()
    assert not is_listening("127.0.0.1", port)


def _node_group(daemon: subprocess.Popen[bytes]) -> int:
    """The process group of the SuperNode a daemon runs (a session of its own)."""
    nodes = []
    for process in psutil.Process(daemon.pid).children(recursive=True):
        with suppress(psutil.NoSuchProcess):  # a child just reaped (a zombie) included
            if flower_name(process) == "flower-supernode":
                nodes.append(process)
    (node,) = nodes
    return os.getpgid(node.pid)


def _superlink_of(service: subprocess.Popen[bytes]) -> psutil.Process:
    # A SuperLink that the service just replaced can linger as a zombie: flower_name skips it.
    (superlink,) = [
        p for p in psutil.Process(service.pid).children(recursive=True)
        if flower_name(p) == "flower-superlink"
    ]  # fmt: skip
    return superlink


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    log = run_dir / "rounds.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _logged(run_dir: Path) -> list[int]:
    return [line["round"] for line in _lines(run_dir)]
