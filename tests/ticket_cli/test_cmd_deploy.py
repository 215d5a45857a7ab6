"""`ticket deploy` without a fleet: argument checks, the table, and a run that never reported."""

from pathlib import Path
from typing import Any

import pytest

from tests.inprocess import find_ticket
from ticket_cli import cmd_deploy
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


# ---------------------------------------------------------------- progress, names, reasons


def _server_yaml(tmp_path: Path, fleet_key: Path, names: dict[int, str]) -> Path:
    """A server.yaml whose state directory holds enrolment records for `names`."""
    from server.enrolment import Enrolment, EnrolmentRecords

    state = tmp_path / "state"
    records = EnrolmentRecords(state / "nodes.json")
    state.mkdir()
    for node_id, name in names.items():
        records.add(Enrolment(node_id, name, f"SHA256:{name}", f"key {name}", "2026-01-01"))
    path = tmp_path / "server.yaml"
    path.write_text(f"state_dir: {state}\nfleet_key: {fleet_key}\nrun: {{ticket: null}}\n")
    return path


def _fake_rollout(document: dict[str, Any], calls: list[str]) -> Any:
    """Stands in for the Flower run: reports each ack, then returns `document`."""

    def roll_out(*args: Any, on_ack: Any = None, **kwargs: Any) -> dict[str, Any]:
        for ack in document["nodes"]:
            calls.append(f"ack {ack['node_id']}")
            on_ack(ack)
        return document

    return roll_out


def test_deploy_prints_each_ack_as_it_comes_and_names_the_devices(
    signed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server_yaml = _server_yaml(tmp_path, signed.parent / "fleet.pub", {7: "clinic-a", 8: "pi-8"})
    document = {
        "ticket_id": "ab" * 32,
        "succeeded": True,
        "reason": "",
        "nodes": [
            {"node_id": 8, "status": "installed", "reason": "", "canary": False},
            {"node_id": 7, "status": "installed", "reason": "", "canary": False},
        ],
    }
    calls: list[str] = []
    monkeypatch.setattr(cmd_deploy, "roll_out", _fake_rollout(document, calls))
    real_print = print

    def recording_print(*args: Any, **kwargs: Any) -> None:
        calls.append(" ".join(map(str, args)))
        real_print(*args, **kwargs)

    monkeypatch.setattr("builtins.print", recording_print)

    assert main(["deploy", str(signed), "-c", str(server_yaml), "--run-dir", str(tmp_path)]) == 0

    # Each device's line is printed as its ack arrives, before the next one.
    assert calls[1:5] == [
        "ack 8",
        "  pi-8 (node 8) installed",
        "ack 7",
        "  clinic-a (node 7) installed",
    ]
    table = capsys.readouterr().out.split("installed\n  clinic-a (node 7) installed\n")[1]
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:3]}
    assert rows == {"8": "pi-8", "7": "clinic-a"}


def test_a_rollout_to_no_device_records_why_in_the_ledger(
    signed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from server.deployments import DeploymentLedger

    server_yaml = _server_yaml(tmp_path, signed.parent / "fleet.pub", {7: "clinic-a", 8: "pi-8"})
    document = {"ticket_id": "ab" * 32, "succeeded": False, "reason": "no device connected"}
    monkeypatch.setattr(cmd_deploy, "roll_out", _fake_rollout({**document, "nodes": []}, []))

    assert main(["deploy", str(signed), "-c", str(server_yaml), "--run-dir", str(tmp_path)]) == 1

    why = "no device connected: 2 enrolled, 0 online"
    assert capsys.readouterr().out.splitlines()[-1] == f"rollout did NOT succeed: {why}"
    (event,) = DeploymentLedger(tmp_path / "state" / "deployments").events()
    assert not event.succeeded and event.reason == why
    assert main(["deployments", "-c", str(server_yaml)]) == 0
    assert f"FAILED    ({why})" in capsys.readouterr().out


def test_a_failed_rollouts_reason_ends_the_table() -> None:
    document = {
        "succeeded": False,
        "reason": "1 of 2 devices installed it; 100% had to",
        "nodes": [
            {"node_id": 7, "status": "installed", "reason": "", "canary": False},
            {"node_id": 9, "status": "offline", "reason": "no answer", "canary": False},
        ],
    }
    table = format_acks(document, {7: "clinic-a"})
    assert table.splitlines()[-1] == (
        "rollout did NOT succeed: 1 installed, 1 offline (1 of 2 devices installed it; 100% had to)"
    )
    assert "clinic-a" in table and "(not enrolled)" in table


def test_follow_progress_reports_each_complete_line_as_it_is_written(tmp_path: Path) -> None:
    from server.rollout_progress import ProgressLog

    log = ProgressLog(tmp_path)
    log.start()
    seen: list[int] = []
    writes = iter([{"node_id": 1}, {"node_id": 2}, None])

    def done() -> bool:  # each poll: the run writes one more ack, or ends
        ack = next(writes)
        if ack is None:
            return True
        if ack["node_id"] == 2:  # a line cut short is left for the next poll
            with log.path.open("a") as out:
                out.write('{"node_id": 2')
            return False
        log.append(ack)
        return False

    def on_ack(ack: dict[str, Any]) -> None:
        seen.append(ack["node_id"])

    cmd_deploy.follow_progress(log.path, on_ack, done=done, poll_s=0)
    assert seen == [1]

    with log.path.open("a") as out:
        out.write("}\n")
    cmd_deploy.follow_progress(log.path, on_ack, done=lambda: True, poll_s=0)
    assert seen == [1, 1, 2]  # read from the start again: the complete lines, the torn one whole
