"""Edge daemons on loopback: each supervises a real flower-supernode and trains on its readings.

TLS and node authentication on. Three enrolled hospitals, each its own `edge-daemon run` with
its readings ingested and the signed ticket cached; a fourth device is not enrolled, and the
SuperLink turns its node away. During round 1 one node is killed with SIGKILL: its daemon
restarts it. During round 2 another device is unplugged once its ClientApp is training: its
daemon stops its node, the round lists that node as failed and completes with the others.
After the last round each device still connected keeps the final model the server pushes, and
the run directory records who kept it; the device then predicts on its own readings with it,
and personalising it on the device's labelled readings either wins on the held-out ones (and
then predicts) or says why not. Stopping the daemons leaves no process behind.
"""

import json
import re
import signal
import time
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from edge_daemon.model_store import read_header
from edge_daemon.paths import DaemonPaths
from loopback.demo import run_config
from loopback.devices import UNPLUGGED, Device, hospital_csv, prepare_devices
from loopback.launcher import Loopback, free_port
from server.delivery_record import load_record
from tests.inprocess import find_ticket
from ticket.tls import write_dev_pki
from ticket_cli.cli import main as ticket_cli

APP_DIR = Path(__file__).resolve().parents[2]
HOSPITALS = ("Cleveland", "Hungary", "VA Long Beach")


def _clientapps(fleet: Loopback, index: int) -> set[int]:
    """Pids of the flwr-clientapp processes under daemon `index` (its node's, via SuperExec)."""
    daemon = next(s.popen for s in fleet.started if s.label == f"daemon-{index}")
    found = set()
    with suppress(psutil.NoSuchProcess):
        for process in psutil.Process(daemon.pid).children(recursive=True):
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if any(Path(part).name == "flwr-clientapp" for part in process.cmdline()[:2]):
                    found.add(process.pid)
    return found


def _node_id(device: Device) -> int | None:
    """The SuperNode id the device's current node registered with (from its log)."""
    log = device.state_dir / "logs" / "supernode.log"
    ids = re.findall(r"SuperNode ID: (\d+)", log.read_text()) if log.exists() else []
    return int(ids[-1]) if ids else None


def _wait_for(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_daemons_restart_a_killed_node_and_stop_an_ineligible_one(tmp_path: Path) -> None:
    assert ticket_cli(["keygen", "--out", str(tmp_path / "fleet")]) == 0
    ticket = find_ticket(tmp_path / "heart.ticket", density=0.1, sign_key=tmp_path / "fleet.key")
    port = free_port()
    tls = write_dev_pki(tmp_path / "pki", ["127.0.0.1"])
    devices = prepare_devices(
        tmp_path / "devices",
        hospitals=(*HOSPITALS, "Switzerland"),
        ticket=ticket,
        fleet_key=tmp_path / "fleet.pub",
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in range(4)],
        root_certificates=tls.ca_cert,
        node_auth=True,
    )
    fleet = Loopback.of_devices(
        tmp_path / "loopback",
        APP_DIR,
        devices,
        superlink_port=port,
        tls=tls,
        enrolled=devices[:3],  # Switzerland is not enrolled
        grace_s=10.0,
    )
    config = run_config(
        ticket,
        run_dir=tmp_path / "run",
        fleet_key=tmp_path / "fleet.pub",
        num_rounds=4,
        min_nodes=2,
        round_timeout_s=30.0,
        # No federated evaluation: supervision is under test, and each evaluate message costs
        # every node a fresh ClientApp process (torch import) and the round another trip.
        fraction_evaluate=0.0,
    )
    events: dict[str, object] = {}

    def inject(server_round: int) -> None:
        if server_round == 1:
            killed = fleet.kill_daemon_node(0)
            events["restarted"] = _wait_for(
                lambda: fleet.node_pids(0) and fleet.node_pids(0) != [killed], 20.0
            )
        if server_round == 2:
            # Unplugged only once its ClientApp for this round runs: training is in flight.
            before = _clientapps(fleet, 2)
            events["training"] = _wait_for(lambda: _clientapps(fleet, 2) - before, 30.0)
            devices[2].set_conditions(UNPLUGGED)
            events["unplugged_node"] = _node_id(devices[2])
            events["stopped"] = _wait_for(lambda: fleet.node_pids(2) == [], 20.0)

    with fleet:
        assert _wait_for(lambda: all(fleet.node_pids(i) for i in range(3)), 60.0)
        # The unenrolled device's node is turned away by the SuperLink (node authentication).
        status_file = devices[3].state_dir / "status.json"
        assert _wait_for(  # its daemon writes status.json once it is up: it may not be yet
            lambda: (
                status_file.exists() and '"node_last_exit": null' not in status_file.read_text()
            ),
            60.0,
        )
        outcome = fleet.run(config, timeout_s=400.0, on_round=inject)
        statuses = [device.status() for device in devices]
        readings = hospital_csv(HOSPITALS[1], tmp_path / "readings.csv", limit=12)
        before = devices[1].predict(readings)
        personal = devices[1].personalise()
        after = devices[1].predict(readings)
        # Read while the fleet runs: stopping it ends the node's current attempt with 0.
        unenrolled = json.loads(status_file.read_text())
        # SIGTERM to a daemon alone (not its group; the node has a session of its own): the
        # daemon itself must stop its node and everything under it before it exits.
        daemon = next(s.popen for s in fleet.started if s.label == "daemon-1")
        node = psutil.Process(fleet.node_pids(1)[0])
        under_node = [node, *node.children(recursive=True)]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        _, still_running = psutil.wait_procs(under_node, timeout=10)

    unplugged = events.pop("unplugged_node")
    assert events == {"restarted": True, "training": True, "stopped": True}
    assert outcome.completed, outcome.status
    assert [line["round"] for line in outcome.rounds] == [1, 2, 3, 4]
    assert all(line["participants"] for line in outcome.rounds)
    # The round the device was unplugged in went on with the others (the undisturbed device 1
    # among them; device 0's node, killed in round 1, may be reported unavailable by the
    # SuperLink in round 2 as well). The unplugged device's update either failed with its
    # stopped node or, when its ClientApp finished before the stop reached it, counted once.
    round_2 = outcome.rounds[1]
    assert isinstance(unplugged, int)
    assert (str(unplugged) in round_2["failures"]) != (unplugged in round_2["participants"])
    assert _node_id(devices[1]) in round_2["participants"], round_2
    assert all(len(line["bytes"]["down"]) <= 3 for line in outcome.rounds)  # never Switzerland
    assert unenrolled["node_starts"] >= 1 and unenrolled["node_last_exit"] not in (None, 0)
    later = outcome.rounds[2:]
    assert all(unplugged not in line["participants"] for line in later)  # it sat them out
    # The killed node's restart rejoins training. The SuperLink holds the killed node's id
    # "online" until its heartbeat lapses (2 x 30 s), so the restart can activate only after
    # that: in round 3, or in round 4 on a loaded machine.
    assert any(_node_id(devices[0]) in line["participants"] for line in later), later
    # What each owner sees: rounds joined; the unplugged device says why it is not training.
    assert all(status["rounds_joined"] >= 1 for status in statuses[:3])
    assert statuses[3]["rounds_joined"] == 0
    assert statuses[2]["eligible"] is False and statuses[2]["node_running"] is False
    assert any("power" in reason for reason in statuses[2]["reasons"])
    # The final model: device 1 (undisturbed) kept the aggregate of round 4 for `predict`; the
    # record lists it, and never the unplugged device's stopped node among those that kept it.
    header = read_header(DaemonPaths(devices[1].state_dir).model_file)
    record = load_record(tmp_path / "run")
    assert record is not None and record.server_round == 4
    assert (header.server_round, header.final, header.ticket_id) == (4, True, record.ticket_id)
    assert _node_id(devices[1]) in record.kept and unplugged not in record.kept
    # The owner's model: the final global one (unless the daemon personalised it already),
    # then whichever personalisation chose, saying why.
    assert before["model"]["final"] is True and before["model"]["after_round"] == 4
    assert len(before["predictions"]) == 12
    assert (personal["base"]["final"], personal["base"]["server_round"]) == (True, 4)
    assert personal["why"], personal
    assert after["model_kind"] == ("personal" if personal["used"] else "global"), after
    assert "final global model" in after["answered_by"]
    assert still_running == []
    assert fleet.alive() == []
