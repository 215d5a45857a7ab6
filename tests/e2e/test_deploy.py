"""`ticket deploy` on loopback with real edge daemons (TLS, node authentication on).

Three enrolled devices without the ticket; one trusts another fleet's key. The rollout table
shows two installed and one rejected with the reason; a training run with the deployed ticket
then trains on the two, and the third replies that it lacks the ticket. A tampered bundle is
refused before any device sees it.
"""

from pathlib import Path

import pytest

from deploy.cli import main as ticket_cli
from deploy.demo import run_config
from deploy.devices import prepare_devices
from deploy.loopback import CONNECTION, Loopback, free_port
from tests.inprocess import find_ticket
from ticket.bundle import read_ticket
from ticket.tls import write_dev_pki

APP_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_deploy_installs_where_trusted_and_training_uses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("fleet", "other"):
        assert ticket_cli(["keygen", "--out", str(tmp_path / name)]) == 0
    ticket = find_ticket(tmp_path / "heart.ticket", density=0.1, sign_key=tmp_path / "fleet.key")
    content_id = read_ticket(ticket, allow_unsigned=True).content_id
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
    deploy = [
        *("deploy", str(ticket), "--connection", CONNECTION),
        *("--fleet-key", str(tmp_path / "fleet.pub"), "--timeout", "60"),
        *("--flwr-home", str(tmp_path / "loopback" / "cli"), "--run-dir", str(tmp_path / "d")),
    ]
    with fleet:
        fleet.wait_for_daemon_nodes(3)

        status = ticket_cli(deploy)
        table = capsys.readouterr().out

        tampered = tmp_path / "tampered.ticket"
        data = bytearray(ticket.read_bytes())
        data[len(data) // 2] ^= 1
        tampered.write_bytes(bytes(data))
        refused = ticket_cli([*deploy[:1], str(tampered), *deploy[2:]])

        config = run_config(
            ticket,
            run_dir=tmp_path / "run",
            rounds=1,
            nodes=2,
            **{"round-timeout-s": 60.0, "fleet-key": str(tmp_path / "fleet.pub")},
        )
        config["allow-unsigned"] = False
        outcome = fleet.run(config, timeout_s=300)

    assert status == 1  # not every device installed it
    assert table.count("installed") >= 2 and "rejected" in table and "not trusted" in table
    assert refused != 0
    assert (devices[0].state_dir / "tickets" / f"{content_id}.ticket").exists()
    assert not (devices[2].state_dir / "tickets" / f"{content_id}.ticket").exists()
    assert outcome.completed
    [line] = outcome.rounds
    assert len(line["participants"]) == 2
    assert any("not cached on this device" in why for why in line["failures"].values())
