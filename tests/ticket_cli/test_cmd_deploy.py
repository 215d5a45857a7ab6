"""`ticket deploy` without a fleet: argument checks, the table, and a run that never reported."""

from pathlib import Path

import pytest

from tests.inprocess import find_ticket
from ticket_cli.cli import main
from ticket_cli.cmd_deploy import format_acks


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("signed")
    assert main(["keygen", "--out", str(directory / "fleet")]) == 0
    return find_ticket(directory / "t.ticket", density=0.5, sign_key=directory / "fleet.key")


def test_the_table_names_every_device_and_the_verdict() -> None:
    document = {
        "ticket_id": "ab" * 32,
        "succeeded": False,
        "nodes": [
            {"node_id": 7, "status": "installed", "reason": "", "canary": True},
            {"node_id": 8, "status": "rejected", "reason": "not trusted", "canary": False},
            {"node_id": 9, "status": "offline", "reason": "no answer", "canary": False},
        ],
    }
    table = format_acks(document)
    assert "installed" in table and "(canary)" in table and "not trusted" in table
    assert table.splitlines()[-1] == ("rollout did NOT succeed: 1 installed, 1 offline, 1 rejected")


def test_a_canary_fraction_outside_0_1_is_refused(
    signed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = signed.parent / "fleet.pub"
    args = ["deploy", str(signed), "--connection", "x", "--fleet-key", str(key)]
    assert main([*args, "--canary", "1.5"]) != 0
    assert "--canary must be in [0, 1]" in capsys.readouterr().err


def test_a_ticket_from_another_fleet_is_refused_before_any_device_sees_it(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "other")]) == 0
    args = ["deploy", str(signed), "--connection", "x", "--fleet-key", str(tmp_path / "other.pub")]
    assert main([*args, "--run-dir", str(tmp_path / "run")]) != 0
    assert "not trusted" in capsys.readouterr().err
    assert not (tmp_path / "run" / "deploy.json").exists()


def test_a_run_that_cannot_be_submitted_is_an_error(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = signed.parent / "fleet.pub"
    args = ["deploy", str(signed), "--connection", "nowhere", "--fleet-key", str(key)]
    home = tmp_path / "flwr"
    home.mkdir()
    assert main([*args, "--flwr-home", str(home), "--run-dir", str(tmp_path / "run")]) != 0
    assert "left no deploy.json" in capsys.readouterr().err
    # The Flower app it submitted is written into the run directory, from ticket/runconfig.py.
    from ticket.runconfig import render_table

    assert render_table() in (tmp_path / "run" / "app" / "pyproject.toml").read_text()


def test_rollout_options_are_checked_before_anything_is_sent(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(signed.parent / "fleet.pub")
    cases = [
        (["deploy", str(signed)], "give -c/--server-config, or --connection and --fleet-key"),
        (["deploy", str(signed), "--connection", "x", "--fleet-key", key, "--min-installed", "0"],
         "--min-installed must be in (0, 1]"),
        (["deploy", str(signed), "--connection", "x", "--fleet-key", key, "--max-regression", "2"],
         "--max-regression must be in [0, 1]"),
        (["deploy", str(signed), "--connection", "x", "--fleet-key", key, "--canary-epochs", "-1"],
         "--canary-epochs must be >= 0"),
        (["deploy", str(signed), "-c", str(tmp_path / "server.yaml"), "--connection", "x"],
         "-c/--server-config sets --connection itself"),
        (["rollback", "--connection", "x", "--fleet-key", key],
         "rollback needs a deployment ledger"),
        (["deployments"], "give exactly one of -c/--server-config and --ledger"),
        (["deployments", "-c", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 3, args
        assert message in capsys.readouterr().err, args


def test_a_damaged_ledger_stops_the_rollout_and_names_the_file(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "ledger.json").write_text("{torn")
    key = str(signed.parent / "fleet.pub")
    args = ["deploy", str(signed), "--connection", "x", "--fleet-key", key, "--ledger", str(ledger)]

    assert main([*args, "--run-dir", str(tmp_path / "run")]) == 3

    assert f"{ledger / 'ledger.json'}: unreadable" in capsys.readouterr().err
    assert not (ledger / "tickets").exists() and not (tmp_path / "run" / "deploy.json").exists()


def test_nothing_to_roll_back_to_is_an_error(
    signed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    from server.deployments import DeploymentLedger

    DeploymentLedger(tmp_path).record("deploy", "a" * 64, succeeded=True, at=datetime.now(UTC))
    key = str(signed.parent / "fleet.pub")

    assert (
        main(["rollback", "--connection", "x", "--fleet-key", key, "--ledger", str(tmp_path)]) == 3
    )
    assert "nothing to roll back to (the active ticket is aaaaaaaaaaaa" in capsys.readouterr().err
    assert main(["deployments", "--ledger", str(tmp_path)]) == 0
    assert f"active ticket: {'a' * 64}" in capsys.readouterr().out
