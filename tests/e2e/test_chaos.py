"""Chaos: a secure run on four edge daemons survives kill -9 of each kind of process.

`fleet-server run` (TLS, node authentication, secure aggregation, round goal 4 with a
reporting deadline) trains its ticket for ROUNDS rounds on four enrolled daemons. At seeded
random instants — a seeded round, then a seeded delay into it — the test sends SIGKILL to
one process of each kind: an edge daemon (restarted a few seconds later, as systemd would),
a daemon's SuperNode (its daemon restarts it), the ServerApp (the service backs off, then
resumes the run from its last checkpoint) and the SuperLink (the service exits with an error;
the test starts it again, as systemd's Restart=on-failure does, and it resumes on the same
state directory).

At the end:
- every round is in the run log exactly once and was checkpointed once, and no checkpoint
  written before a kill was written again (each restart resumed, none started over);
- the global model after every round, the final one included, equals bit for bit a replay
  of the run outside Flower from the ticket's W_k with each round's recorded survivors
  (tests/replay.py): nothing was averaged in that should not have been, no round was
  trained twice into the model, no resume started from the wrong checkpoint;
- a device holds that final model;
- no process started here, or by what it started, is left running.

CHAOS_SEED=N in the environment picks another schedule (the failure message names the seed).
"""

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from edge_daemon.model_store import load_model
from edge_daemon.paths import DaemonPaths
from loopback.devices import Device, prepare_devices
from loopback.launcher import ProcessId, flower_name
from server.delivery_record import load_record
from server.superlink import free_port, is_listening
from tests.e2e.test_fleet_server import _fleet_server, _online, _start, _stop_all, _wait_for
from tests.inprocess import find_ticket
from tests.replay import replay_secure_run
from ticket.bundle import read_ticket
from ticket.packing import PackLayout
from ticket.runconfig import TrainingSettings
from ticket.tensorfile import read_tensor_file

BIN = Path(sys.executable).parent
ROUNDS = 6
DEADLINE_S = 12
KINDS = ("daemon", "supernode", "serverapp", "superlink")
MAX_STARTS = 5  # as the systemd unit's StartLimitBurst: more failed starts are a bug
DAEMON_DOWN_S = 5.0  # a killed daemon's restart comes this long after (systemd's RestartSec)
SETTINGS = TrainingSettings(
    num_rounds=ROUNDS,
    min_nodes=3,
    round_timeout_s=30,
    round_goal=4,
    round_deadline_s=DEADLINE_S,
    fraction_evaluate=0.0,
    secagg=True,
    seed=11,
)


@dataclass(frozen=True)
class Kill:
    kind: str
    server_round: int  # fired once this round is under way (the round before checkpointed)
    delay_s: float  # after that


def schedule(seed: int) -> list[Kill]:
    """One kill of each kind, each in its own round (2..ROUNDS), in round order."""
    rng = random.Random(seed)
    rounds = sorted(rng.sample(range(2, ROUNDS + 1), len(KINDS)))
    kinds = rng.sample(KINDS, len(KINDS))
    return [
        Kill(kind, r, round(rng.uniform(0.5, 4.0), 2))
        for kind, r in zip(kinds, rounds, strict=True)
    ]


def _yaml(state: Path, port: int, ticket: Path) -> str:
    s = SETTINGS
    return "\n".join(
        [
            f"state_dir: {json.dumps(str(state))}",
            f"listen: {{host: 127.0.0.1, port: {port}}}",
            "run:",
            f"  ticket: {json.dumps(str(ticket))}",
            f"  num_rounds: {s.num_rounds}",
            f"  min_nodes: {s.min_nodes}",
            f"  round_timeout_s: {s.round_timeout_s}",
            f"  round_goal: {s.round_goal}",
            f"  round_deadline_s: {s.round_deadline_s}",
            f"  fraction_evaluate: {s.fraction_evaluate}",
            "  secagg: true",
            f"  seed: {s.seed}",
            "",
        ]
    )


class Fleet:
    """The processes of the test: the service (restarted like systemd would) and the daemons,
    with a record of every process seen in their trees."""

    def __init__(self, tmp_path: Path, config: Path, devices: list[Device]) -> None:
        self.tmp_path = tmp_path
        self.run_dir = tmp_path / "state" / "runs" / "main"
        self.config = config
        self.devices = devices
        self.started: list[subprocess.Popen[bytes]] = []
        self.daemons: dict[int, subprocess.Popen[bytes]] = {}
        self.service: subprocess.Popen[bytes] | None = None
        self.service_starts = 0
        self.gave_up = False  # the service failed MAX_STARTS times: a bug, not a kill
        self.seen: dict[int, ProcessId] = {}
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._follow, daemon=True)

    def start_service(self) -> None:
        self._start_service()
        self._watch.start()

    def start_daemons(self) -> None:
        for index in range(len(self.devices)):
            self.start_daemon(index)

    def stop(self) -> None:
        self._stop.set()
        if self._watch.is_alive():
            self._watch.join(timeout=10)
        self._sample()
        _stop_all(self.started)

    def start_daemon(self, index: int) -> None:
        command = [str(BIN / "edge-daemon"), "run", "-c", str(self.devices[index].config)]
        popen = _start(command, self.tmp_path / f"daemon-{index}.log")
        self.started.append(popen)
        self.daemons[index] = popen

    @property
    def service_log(self) -> Path:
        return self.tmp_path / "service.log"

    @property
    def finished(self) -> bool:
        """The last round checkpointed and its final model kept by a device."""
        record = load_record(self.run_dir)
        return _checkpoint(self.run_dir, ROUNDS).exists() and bool(record and record.kept)

    def process(self, kind: str) -> psutil.Process:
        """A live process of `kind` to kill: the first daemon itself, the second daemon's
        SuperNode (so the two kills hit different devices), the service's ServerApp or its
        SuperLink."""
        if kind == "daemon":
            return psutil.Process(self.daemons[0].pid)
        root = self.daemons[1].pid if kind == "supernode" else self._service_pid()
        name = {"supernode": "flower-supernode", "serverapp": "flwr-serverapp"}.get(
            kind, "flower-superlink"
        )
        for process in psutil.Process(root).children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                if flower_name(process) == name and process.status() != psutil.STATUS_ZOMBIE:
                    return process
        raise LookupError(f"no {name} running")

    def _service_pid(self) -> int:
        assert self.service is not None
        return self.service.pid

    def _start_service(self) -> None:
        command = [str(BIN / "fleet-server"), "run", "-c", str(self.config)]
        self.service = _start(command, self.service_log)
        self.started.append(self.service)
        self.service_starts += 1

    def _follow(self) -> None:
        """Record the trees; start the service again when it fails (Restart=on-failure)."""
        while not self._stop.wait(0.5):
            self._sample()
            assert self.service is not None
            code = self.service.poll()
            if code not in (None, 0) and not self.gave_up:
                if self.service_starts >= MAX_STARTS:
                    self.gave_up = True
                    continue
                time.sleep(1.0)
                self._start_service()

    def _sample(self) -> None:
        for popen in list(self.started):
            with suppress(psutil.NoSuchProcess):
                root = psutil.Process(popen.pid)
                for process in [root, *root.children(recursive=True)]:
                    with suppress(psutil.NoSuchProcess):
                        key = ProcessId(process.pid, process.create_time(), flower_name(process))
                        self.seen.setdefault(process.pid, key)

    def alive(self) -> list[ProcessId]:
        return [process for process in self.seen.values() if process.alive()]


def _checkpoint(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round-{server_round:06d}.ckpt"


def _inject(
    fleet: Fleet, kills: list[Kill], done: list[tuple[Kill, int]], kept: dict[str, bytes]
) -> None:
    """Fire `kills` in order; `kept`: every checkpoint there was at each kill, as it was."""
    for kill in kills:
        _wait_for(
            lambda k=kill: _checkpoint(fleet.run_dir, k.server_round - 1).exists(),
            300,
            f"round {kill.server_round}",
        )
        time.sleep(kill.delay_s)
        victim = _retry(lambda k=kill: fleet.process(k.kind), 60, f"a {kill.kind} to kill")
        for path in (fleet.run_dir / "checkpoints").glob("*.ckpt"):
            kept.setdefault(path.name, path.read_bytes())
        victim.kill()
        done.append((kill, victim.pid))
        if kill.kind == "daemon":
            fleet.daemons[0].wait(timeout=10)
            time.sleep(DAEMON_DOWN_S)
            fleet.start_daemon(0)


def _retry(find: Callable[[], psutil.Process], timeout_s: float, what: str) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return find()
        except LookupError:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}") from None
            time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_of_daemon_supernode_serverapp_and_superlink_leaves_the_replayed_model(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "2026"))
    kills = schedule(seed)
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "server.yaml"
    config.write_text(f"state_dir: {json.dumps(str(state))}\nrun: {{num_rounds: 1}}\n")
    init = _fleet_server("init", "-c", str(config))
    assert init.returncode == 0, init.stderr
    ticket = find_ticket(tmp_path / "a.ticket", density=0.1, sign_key=state / "keys" / "fleet.key")
    config.write_text(_yaml(state, port, ticket))
    devices = prepare_devices(
        tmp_path / "devices",
        ticket=ticket,
        fleet_key=state / "keys" / "fleet.pub",
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in range(4)],
        root_certificates=state / "pki" / "ca.crt",
        node_auth=True,
    )
    fleet = Fleet(tmp_path, config, devices)
    done: list[tuple[Kill, int]] = []
    kept: dict[str, bytes] = {}
    why = f"CHAOS_SEED={seed}, schedule {kills}"
    try:
        fleet.start_service()
        _wait_for(lambda: is_listening("127.0.0.1", port), 120, "the SuperLink")
        for device in devices:  # the run waits for min_nodes meanwhile
            enrolled = _fleet_server(
                "enroll", str(device.public_key), "--name", device.name, "-c", str(config)
            )
            assert enrolled.returncode == 0, enrolled.stderr
        fleet.start_daemons()
        _wait_for(lambda: _online(config) == 4, 180, "four devices online")
        _inject(fleet, kills, done, kept)
        _wait_for(lambda: fleet.finished or fleet.gave_up, 600, f"the run's end ({why})")
        assert not fleet.gave_up, f"{why}: {fleet.service_log.read_text()[-2000:]}"
    finally:
        fleet.stop()

    assert [kill for kill, _ in done] == kills, why
    assert fleet.service_starts >= 2, why  # the SuperLink's kill ended the first service
    run_dir = fleet.run_dir
    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == list(range(1, ROUNDS + 1)), why
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == ROUNDS, why
    # Resumed, never restarted: a round checkpointed before a kill was not trained again.
    assert kept and all((run_dir / "checkpoints" / n).read_bytes() == b for n, b in kept.items())
    resumed = fleet.service_log.read_text().count(f"resuming {run_dir} after round")
    assert resumed >= 2, why  # after the ServerApp's kill and after the SuperLink's
    # Secure aggregation lost members and still summed the rest: keys for round r + 1 ride
    # with round r (2 trips), a fresh Flower run sets up first (4 trips), and a member lost
    # mid-round is dropped at its stage, its masks removed.
    setup = {"setup": 2, "train": 1, "unmask": 1, "total": 4}
    steady = {"train": 1, "unmask": 1, "total": 2}
    assert lines[0]["round_trips"] == setup, why
    assert all(line["round_trips"] in (setup, steady) for line in lines), why
    assert any(line["round_trips"] == steady for line in lines), why
    assert any(line["secagg"]["dropped"] and line["closed"] == "deadline" for line in lines), why

    records = json.loads((state / "nodes.json").read_text())["nodes"]
    by_name = {device.name: device for device in devices}
    readings = {
        int(record["node_id"]): DaemonPaths(by_name[record["name"]].state_dir).readings_db
        for record in records
    }
    found = read_ticket(ticket, allow_unsigned=True)
    replayed = replay_secure_run(found, lines, readings, SETTINGS)
    for line, again in zip(lines, replayed, strict=True):
        tensors, _ = read_tensor_file(_checkpoint(run_dir, again.server_round))
        assert np.array_equal(tensors["packed"], again.vector), (line, why)
    assert sum(len(again.survivors) for again in replayed) > 0, why

    size = PackLayout.from_ticket(found).size
    held = []
    for device in devices:
        with suppress(FileNotFoundError):
            header, values = load_model(
                DaemonPaths(device.state_dir).model_file, ticket_id=found.content_id, count=size
            )
            if header.final:
                held.append(values)
    assert held and all(np.array_equal(values, replayed[-1].vector) for values in held), why
    assert fleet.alive() == [], why
    assert not is_listening("127.0.0.1", port)
