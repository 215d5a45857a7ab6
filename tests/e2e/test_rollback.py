"""The deployment ledger on loopback with real edge daemons (TLS, node authentication on).

Two enrolled devices. Ticket A is rolled out and becomes active; ticket B goes to a canary
first, whose devices train both tickets from W_k and score them before the rest get B; then
`ticket rollback` rolls A out again and makes it active; `ticket deployments` tells the story.
"""

import json
from pathlib import Path

import pytest

from deploy.cli import main as ticket_cli
from deploy.devices import prepare_devices
from deploy.loopback import CONNECTION, Loopback, free_port
from server.deployments import DeploymentLedger
from tests.inprocess import find_ticket
from ticket.bundle import read_ticket
from ticket.tls import write_dev_pki

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_deploy_canary_and_rollback_keep_the_active_ticket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ticket_cli(["keygen", "--out", str(tmp_path / "fleet")]) == 0
    key = tmp_path / "fleet.key"
    first = find_ticket(tmp_path / "a.ticket", density=0.1, sign_key=key)
    second = find_ticket(tmp_path / "b.ticket", density=0.2, sign_key=key)
    ids = [read_ticket(path, allow_unsigned=True).content_id for path in (first, second)]
    port = free_port()
    tls = write_dev_pki(tmp_path / "pki", ["127.0.0.1"])
    devices = prepare_devices(
        tmp_path / "devices",
        hospitals=("Cleveland", "Hungary"),
        ticket=None,
        fleet_key=tmp_path / "fleet.pub",
        superlink=f"127.0.0.1:{port}",
        ports=[free_port(), free_port()],
        root_certificates=tls.ca_cert,
        node_auth=True,
    )
    fleet = Loopback.of_devices(
        tmp_path / "loopback", APP_DIR, devices, superlink_port=port, tls=tls
    )
    ledger_dir = tmp_path / "ledger"
    common = [
        *("--connection", CONNECTION, "--fleet-key", str(tmp_path / "fleet.pub")),
        *("--flwr-home", str(tmp_path / "loopback" / "cli"), "--ledger", str(ledger_dir)),
        *("--timeout", "60"),
    ]
    with fleet:
        fleet.wait_for_daemon_nodes(2)

        deployed = ticket_cli(["deploy", str(first), *common, "--run-dir", str(tmp_path / "d1")])
        first_table = capsys.readouterr().out
        canary = ticket_cli(
            ["deploy", str(second), *common, "--run-dir", str(tmp_path / "d2"),
             "--canary", "0.5", "--canary-epochs", "3", "--max-regression", "0.5"]
        )  # fmt: skip
        canary_table = capsys.readouterr().out
        rolled_back = ticket_cli(["rollback", *common, "--run-dir", str(tmp_path / "d3")])
        rollback_table = capsys.readouterr().out

    assert deployed == 0, first_table
    assert f"active ticket: {ids[0][:12]}" in first_table
    assert canary == 0, canary_table
    assert "canary evaluation passed" in canary_table
    document = json.loads((tmp_path / "d2" / "deploy.json").read_text())
    evaluation = document["canary"]
    assert evaluation["candidate"]["ticket_id"] == ids[1]
    assert evaluation["baseline"]["ticket_id"] == ids[0]  # compared with the active ticket
    assert len(evaluation["candidate"]["by_node"]) == 1  # half of two devices
    assert 0.4 < evaluation["candidate"]["accuracy"] <= 1.0
    assert sum(node["canary"] for node in document["nodes"]) == 1
    assert all(node["status"] == "installed" for node in document["nodes"])
    assert rolled_back == 0, rollback_table
    assert f"active ticket: {ids[0][:12]} (was {ids[1][:12]})" in rollback_table
    for device in devices:  # both tickets cached on every device
        assert {f"{i}.ticket" for i in ids} <= {
            p.name for p in (device.state_dir / "tickets").iterdir()
        }

    ledger = DeploymentLedger(ledger_dir)
    assert ledger.active() == ids[0] and ledger.history() == [ids[0]]
    assert [(e.action, e.ticket_id, e.succeeded) for e in ledger.events()] == [
        ("deploy", ids[0], True),
        ("deploy", ids[1], True),
        ("rollback", ids[0], True),
    ]
    assert ticket_cli(["deployments", "--ledger", str(ledger_dir), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"] == ids[0] and len(listing["events"]) == 3
    assert ticket_cli(["rollback", *common]) != 0  # nothing before A
    assert "nothing to roll back to" in capsys.readouterr().err
