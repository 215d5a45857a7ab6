"""`ticket deploy`, the canary, `ticket rollback` and the ledger on loopback with real edge
daemons (TLS, node authentication on).

Three enrolled devices without a ticket; VA Long Beach trusts another fleet's key. Ticket A's
rollout table shows two installed and one rejected with the reason: not every device, so the
command fails and nothing becomes active; with --min-installed it succeeds and A is active. A
tampered bundle is refused before any device sees it. A training run with A trains on the two
devices, and the third replies that it lacks the ticket. Ticket B goes to a canary first, whose
devices train B and A from W_k and score both before the rest get B; then `ticket rollback`
rolls A out again and makes it active; `ticket deployments` tells the story.
"""

import json
from pathlib import Path

import pytest

from loopback.demo import run_config
from loopback.devices import prepare_devices
from loopback.launcher import CONNECTION, Loopback, free_port
from server.deployments import DeploymentLedger
from tests.inprocess import find_ticket
from ticket.bundle import read_ticket
from ticket.tls import write_dev_pki
from ticket_cli.cli import main as ticket_cli

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_deploy_canary_rollback_and_training_with_the_deployed_ticket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("fleet", "other"):
        assert ticket_cli(["keygen", "--out", str(tmp_path / name)]) == 0
    key = tmp_path / "fleet.key"
    first = find_ticket(tmp_path / "a.ticket", density=0.1, sign_key=key)
    second = find_ticket(tmp_path / "b.ticket", density=0.2, sign_key=key)
    ids = [read_ticket(path, allow_unsigned=True).content_id for path in (first, second)]
    port = free_port()
    tls = write_dev_pki(tmp_path / "pki", ["127.0.0.1"])
    common = {
        "ticket": None,
        "superlink": f"127.0.0.1:{port}",
        "root_certificates": tls.ca_cert,
        "node_auth": True,
    }
    devices = prepare_devices(
        tmp_path / "devices",
        hospitals=("Cleveland", "Hungary"),
        fleet_key=tmp_path / "fleet.pub",
        ports=[free_port(), free_port()],
        **common,  # type: ignore[arg-type]
    ) + prepare_devices(
        tmp_path / "devices",
        hospitals=("VA Long Beach",),
        fleet_key=tmp_path / "other.pub",  # this device trusts another fleet
        ports=[free_port()],
        **common,  # type: ignore[arg-type]
    )
    fleet = Loopback.of_devices(
        tmp_path / "loopback", APP_DIR, devices, superlink_port=port, tls=tls
    )
    ledger_dir = tmp_path / "ledger"
    target = [
        *("--connection", CONNECTION, "--fleet-key", str(tmp_path / "fleet.pub")),
        *("--flwr-home", str(tmp_path / "loopback" / "cli"), "--ledger", str(ledger_dir)),
        *("--timeout", "60"),
    ]

    def ticket(*args: str, run: str) -> tuple[int, str]:
        code = ticket_cli([*args, *target, "--run-dir", str(tmp_path / run)])
        return code, capsys.readouterr().out

    with fleet:
        fleet.wait_for_daemon_nodes(3)
        strict = ticket("deploy", str(first), run="d0")
        tampered = tmp_path / "tampered.ticket"
        data = bytearray(first.read_bytes())
        data[len(data) // 2] ^= 1
        tampered.write_bytes(bytes(data))
        refused = ticket("deploy", str(tampered), run="d1")
        deployed = ticket("deploy", str(first), "--min-installed", "0.6", run="d2")

        config = run_config(
            first,
            run_dir=tmp_path / "run",
            fleet_key=tmp_path / "fleet.pub",
            num_rounds=1,
            min_nodes=2,
            round_timeout_s=60.0,
        )
        outcome = fleet.run(config, timeout_s=300)

        # Two canary devices of three: VA Long Beach may be one of them and refuse B, so half
        # of the canary (and of the rollout) must install.
        canary = ticket(
            "deploy", str(second), "--canary", "0.5", "--min-installed", "0.5",
            "--canary-epochs", "3", "--max-regression", "0.5", run="d3",
        )  # fmt: skip
        rolled_back = ticket("rollback", "--min-installed", "0.5", run="d4")

    # Not every device installed A: the command fails, the ledger records it, nothing active.
    assert strict[0] == 1
    assert strict[1].count("installed") >= 2 and "not trusted" in strict[1]
    assert "rollout did NOT succeed" in strict[1]
    assert refused[0] != 0 and not (tmp_path / "d1" / "deploy.json").exists()
    assert deployed[0] == 0, deployed[1]
    assert "not trusted" in deployed[1] and f"active ticket: {ids[0][:12]}" in deployed[1]
    assert (devices[0].state_dir / "tickets" / f"{ids[0]}.ticket").exists()
    assert not (devices[2].state_dir / "tickets").exists() or not any(
        (devices[2].state_dir / "tickets").iterdir()
    )
    # Training with the deployed ticket: the device without it says so and the round goes on.
    assert outcome.completed
    [line] = outcome.rounds
    assert len(line["participants"]) == 2 and line["federated_eval"]["accuracy"] > 0
    assert any("not cached on this device" in why for why in line["failures"].values())
    # The canary compared B with the active ticket on the canary devices that installed B.
    assert canary[0] == 0, canary[1]
    assert "canary evaluation passed" in canary[1]
    evaluation = json.loads((tmp_path / "d3" / "deploy.json").read_text())["canary"]
    assert evaluation["candidate"]["ticket_id"] == ids[1]
    assert evaluation["baseline"]["ticket_id"] == ids[0]
    assert 1 <= len(evaluation["candidate"]["by_node"]) <= 2
    assert evaluation["candidate"]["by_node"].keys() == evaluation["baseline"]["by_node"].keys()
    assert 0.4 < evaluation["candidate"]["accuracy"] <= 1.0
    assert rolled_back[0] == 0, rolled_back[1]
    assert f"active ticket: {ids[0][:12]} (was {ids[1][:12]})" in rolled_back[1]
    for device in devices[:2]:  # both tickets cached on every trusting device
        cached = {path.name for path in (device.state_dir / "tickets").iterdir()}
        assert {f"{ticket_id}.ticket" for ticket_id in ids} <= cached

    ledger = DeploymentLedger(ledger_dir)
    assert ledger.active() == ids[0] and ledger.history() == [ids[0]]
    assert [(e.action, e.ticket_id, e.succeeded) for e in ledger.events()] == [
        ("deploy", ids[0], False),
        ("deploy", ids[0], True),
        ("deploy", ids[1], True),
        ("rollback", ids[0], True),
    ]
    assert ticket_cli(["deployments", "--ledger", str(ledger_dir), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["active"] == ids[0] and len(listing["events"]) == 4
    assert ticket_cli(["rollback", *target]) != 0  # nothing before A
    assert "nothing to roll back to" in capsys.readouterr().err
