"""The final model reaches a device that was offline when the run ended.

`fleet-server run` (a subprocess, as systemd starts it) serves TLS with node authentication and
trains server.yaml's `run.ticket` for one round on the one device online (both are enrolled);
the round's end pushes the final model to it. Then the second device comes online: the idle service
sees, in its node list, a node that has not kept the final model, re-runs the finished run
(no round is trained again) and the late device keeps the same final model. final-model.json
lists both devices; the run log still holds one round. Every process is started watched.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_daemon.model_store import read_header
from edge_daemon.paths import DaemonPaths
from loopback.devices import prepare_devices
from server.delivery_record import load_record
from server.superlink import free_port, is_listening
from tests.e2e.test_fleet_server import _fleet_server, _online, _start, _stop_all, _wait_for
from tests.inprocess import find_ticket
from ticket.bundle import read_ticket

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_a_device_offline_at_the_end_of_a_run_gets_its_final_model_later(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    config = tmp_path / "server.yaml"
    init_yaml = f"state_dir: {json.dumps(str(state))}\nlisten: {{host: 127.0.0.1, port: {port}}}\n"
    config.write_text(init_yaml + "run: {num_rounds: 1}\n")
    init = _fleet_server("init", "-c", str(config))
    assert init.returncode == 0, init.stderr
    ticket = find_ticket(tmp_path / "a.ticket", density=0.1, sign_key=state / "keys" / "fleet.key")
    ticket_id = read_ticket(ticket, allow_unsigned=True).content_id
    config.write_text(
        init_yaml + f"run: {{ticket: {json.dumps(str(ticket))}, num_rounds: 1, min_nodes: 1, "
        "round_timeout_s: 30, fraction_evaluate: 0.0}\n"
    )
    devices = prepare_devices(
        tmp_path / "devices",
        hospitals=("Cleveland", "Hungary"),
        ticket=ticket,  # both hold it: the late one can take its final model
        fleet_key=state / "keys" / "fleet.pub",
        superlink=f"127.0.0.1:{port}",
        ports=[free_port() for _ in range(2)],
        root_certificates=state / "pki" / "ca.crt",
        node_auth=True,
    )
    run_dir = state / "runs" / "main"
    started: list[subprocess.Popen[bytes]] = []
    service_log = tmp_path / "service.log"

    def daemon(index: int) -> None:
        command = [str(BIN / "edge-daemon"), "run", "-c", str(devices[index].config)]
        started.append(_start(command, tmp_path / f"daemon-{index}.log"))

    def kept() -> set[int]:
        record = load_record(run_dir)
        return set() if record is None else set(record.kept)

    try:
        started.append(_start([str(BIN / "fleet-server"), "run", "-c", str(config)], service_log))
        _wait_for(lambda: is_listening("127.0.0.1", port), 120, "the SuperLink")
        for device in devices:  # the run waits for its one node meanwhile
            enrolled = _fleet_server(
                "enroll", str(device.public_key), "--name", device.name, "-c", str(config)
            )
            assert enrolled.returncode == 0, enrolled.stderr
        daemon(0)
        _wait_for(lambda: len(kept()) == 1, 240, "the run's end, and its final model kept")
        daemon(1)  # the device that was offline: it comes online after the run
        _wait_for(lambda: _online(config) == 2, 120, "the late device online")
        _wait_for(lambda: len(kept()) == 2, 240, "the final model sent to the late device")
    finally:
        _stop_all(started)

    assert "sending the final model" in service_log.read_text()
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in rounds] == [1]  # the re-run trained no round
    headers = [read_header(DaemonPaths(device.state_dir).model_file) for device in devices]
    assert {(h.ticket_id, h.server_round, h.final) for h in headers} == {(ticket_id, 1, True)}
    assert len({h.sha256 for h in headers}) == 1  # the same model on both
    assert not is_listening("127.0.0.1", port)
