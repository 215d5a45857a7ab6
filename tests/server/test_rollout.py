"""Rolling a signed ticket out to devices in-process: installed, rejected with why, offline."""

from pathlib import Path

import pytest

from deploy.cli import main as ticket_cli
from edge_daemon import client_app
from edge_daemon.state import load_state
from server.rollout import INSTALLED, OFFLINE, REJECTED, SKIPPED, roll_out, write_outcome
from tests.inprocess import InProcessGrid, SilentNodeGrid, find_ticket, server_identity
from ticket.bundle import read_ticket


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    for name in ("fleet", "other"):
        assert ticket_cli(["keygen", "--out", str(directory / name)]) == 0
    find_ticket(directory / "t.ticket", density=0.5, sign_key=directory / "fleet.key")
    return directory


def _device(root: Path, name: str, fleet_key: Path) -> dict[str, bool | float | int | str]:
    return {
        "ticket-dir": str(root / name / "tickets"),
        "fleet-key": str(fleet_key),
        "state-path": str(root / name / "state.json"),
    }


def test_each_device_installs_or_says_why_not(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [
        _device(tmp_path, "a", fleet / "fleet.pub"),
        _device(tmp_path, "b", fleet / "other.pub"),  # trusts another fleet's key
        _device(tmp_path, "c", fleet / "fleet.pub"),  # will not answer
    ]
    grid = SilentNodeGrid(103, client_app.app, nodes)

    with server_identity():
        rollout = roll_out(grid, (fleet / "t.ticket").read_bytes(), ticket.content_id, timeout=30)

    by_node = {ack.node_id: ack for ack in rollout.acks}
    assert by_node[101].status == INSTALLED
    assert by_node[102].status == REJECTED and "not trusted" in by_node[102].reason
    assert by_node[103].status == OFFLINE
    assert not rollout.succeeded
    cached = tmp_path / "a" / "tickets" / f"{ticket.content_id}.ticket"
    assert cached.read_bytes() == (fleet / "t.ticket").read_bytes()
    assert load_state(tmp_path / "a" / "state.json").ticket_ids == (ticket.content_id,)
    assert not (tmp_path / "b" / "tickets").exists() or not any(
        (tmp_path / "b" / "tickets").iterdir()
    )
    document = write_outcome(rollout, tmp_path / "run").read_text()
    assert '"succeeded": false' in document


def test_a_tampered_bundle_is_rejected_everywhere(fleet: Path, tmp_path: Path) -> None:
    data = bytearray((fleet / "t.ticket").read_bytes())
    data[len(data) // 2] ^= 0x01
    nodes = [_device(tmp_path, name, fleet / "fleet.pub") for name in ("a", "b")]

    with server_identity():
        rollout = roll_out(InProcessGrid(client_app.app, nodes), bytes(data), "", timeout=30)

    assert [ack.status for ack in rollout.acks] == [REJECTED, REJECTED]


def test_a_failed_canary_stops_the_rollout(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [_device(tmp_path, name, fleet / "other.pub") for name in "abcd"]  # all refuse

    with server_identity():
        rollout = roll_out(
            InProcessGrid(client_app.app, nodes),
            (fleet / "t.ticket").read_bytes(),
            ticket.content_id,
            timeout=30,
            canary_fraction=0.25,
        )

    canary = [ack for ack in rollout.acks if ack.canary]
    assert len(canary) == 1 and canary[0].status == REJECTED
    assert sorted(ack.status for ack in rollout.acks if not ack.canary) == [SKIPPED] * 3


def test_a_clean_canary_lets_the_rest_follow(fleet: Path, tmp_path: Path) -> None:
    ticket = read_ticket(fleet / "t.ticket", allow_unsigned=True)
    nodes = [_device(tmp_path, name, fleet / "fleet.pub") for name in "abcd"]

    with server_identity():
        rollout = roll_out(
            InProcessGrid(client_app.app, nodes),
            (fleet / "t.ticket").read_bytes(),
            ticket.content_id,
            timeout=30,
            canary_fraction=0.5,
        )

    assert rollout.succeeded and sum(ack.canary for ack in rollout.acks) == 2


def test_the_serverapp_deploys_only_a_ticket_signed_by_the_fleet_key(
    fleet: Path, tmp_path: Path
) -> None:
    from server.server_app import DeploySettings, RunConfigError, run_deploy
    from ticket.errors import TicketError

    config = {
        "mode": "deploy",
        "ticket-path": str(fleet / "t.ticket"),
        "run-dir": str(tmp_path / "run"),
        "fleet-key": str(fleet / "fleet.pub"),
        "round-timeout-s": 30.0,
    }
    nodes = [_device(tmp_path, name, fleet / "fleet.pub") for name in "ab"]
    with server_identity():
        rollout = run_deploy(
            InProcessGrid(client_app.app, nodes), DeploySettings.from_run_config(config)
        )
    assert rollout.succeeded
    assert '"succeeded": true' in (tmp_path / "run" / "deploy.json").read_text()

    foreign = {**config, "fleet-key": str(fleet / "other.pub")}
    with pytest.raises(TicketError), server_identity():
        run_deploy(InProcessGrid(client_app.app, nodes), DeploySettings.from_run_config(foreign))
    with pytest.raises(RunConfigError, match="canary-fraction"):
        DeploySettings.from_run_config({**config, "canary-fraction": 1.5})
