"""`edge-daemon` subcommands run in-process: output, exit statuses, and what they leave on disk."""

import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_daemon.cli import enroll_command, main
from edge_daemon.exit_codes import ExitCode
from edge_daemon.paths import DaemonPaths
from edge_daemon.readings import ReadingsStore
from edge_daemon.state import update_state
from tests.edge_daemon.test_readings import HEADER, ROWS
from tests.inprocess import find_ticket
from ticket.atomic import instance_lock
from ticket_cli.cli import main as ticket_cli

ROOT = Path(__file__).resolve().parents[2]
STATUS_KEYS = {
    "format", "version", "eligible", "reasons", "verdict_source", "verdict_at", "node_running",
    "node_pid", "node_starts", "node_last_exit", "rounds_joined", "last_participation",
    "last_metrics", "bytes_sent", "bytes_received", "last_round", "cached_tickets", "readings",
    "predict_model", "predict_model_why", "personalisation",
}  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """keys fleet.{key,pub} and other.{key,pub}; fleet.ticket and other.ticket signed by each."""
    directory = tmp_path_factory.mktemp("fleet")
    unsigned = find_ticket(directory / "unsigned.ticket", density=0.5)
    for name in ("fleet", "other"):
        assert ticket_cli(["keygen", "--out", str(directory / name)]) == 0
        key, out = directory / f"{name}.key", directory / f"{name}.ticket"
        assert ticket_cli(["sign", str(unsigned), "--key", str(key), "--out", str(out)]) == 0
    return directory


def _config(tmp_path: Path, fleet: Path | None = None, extra: str = "") -> Path:
    path = tmp_path / "daemon.yaml"
    fleet_key = fleet / "fleet.pub" if fleet is not None else tmp_path / "fleet.pub"
    path.write_text(
        f"state_dir: state\nfleet_key: {fleet_key}\n"
        "server:\n  address: 127.0.0.1:9092\n  insecure: true\n" + extra
    )
    return path


def _csv(tmp_path: Path, name: str, *rows: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def _status_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["status", "--json", *args]) == 0
    report: dict[str, object] = json.loads(capsys.readouterr().out)
    return report


# ---------------------------------------------------------------- ingest


def test_ingest_reports_rows_added_expired_and_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, extra="data:\n  retention_rows: 2\n")
    readings = _csv(tmp_path, "readings.csv", *ROWS)

    assert main(["ingest", "-c", str(config), str(readings)]) == 0
    first = capsys.readouterr().out
    assert main(["ingest", "-c", str(config), str(readings)]) == 0
    second = capsys.readouterr().out

    assert f"{readings}: 3 rows added, 1 expired by retention" in first
    assert "2 readings stored" in first
    assert f"{readings}: duplicate of the file ingested" in second and "0 rows added" in second
    with ReadingsStore(DaemonPaths(tmp_path / "state").readings_db) as store:
        assert store.count() == 2


def test_a_bad_file_stores_nothing_of_any_file_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    good = _csv(tmp_path, "good.csv", *ROWS)
    bad = _csv(tmp_path, "bad.csv", ROWS[0], ROWS[1].replace(",67,", ",sixty,"))

    code = main(["ingest", "-c", str(config), str(good), str(bad)])

    captured = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT
    assert captured.out == ""
    error = captured.err.splitlines()
    assert error[0].startswith("edge-daemon ingest: error: bad.csv: line 3, column age: ")
    assert error[1].startswith("  hint: ")
    assert "sixty" not in captured.err  # readings are private: never echoed
    assert not DaemonPaths(tmp_path / "state").readings_db.exists()


def test_ingest_of_a_missing_file_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ingest", "-c", str(_config(tmp_path)), str(tmp_path / "nope.csv")])

    assert code == 3
    assert "nope.csv: cannot read: No such file or directory" in capsys.readouterr().err


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("run", ["run"]),
        ("ingest", ["ingest", "x.csv"]),
        ("status", ["status"]),
        ("tickets add", ["tickets", "add", "x.ticket"]),
        ("tickets list", ["tickets", "list"]),
    ],
)
def test_a_missing_config_is_a_clear_error_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, argv: list[str]
) -> None:
    missing = tmp_path / "daemon.yaml"

    code = main([*argv, "-c", str(missing)])

    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"edge-daemon {name}: error: {missing}: no such file\n")
    assert "Traceback" not in err
    assert not (tmp_path / "state").exists()


def test_run_with_a_bad_key_names_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, extra="eligibility:\n  battery_min_percent: low\n")

    code = main(["run", "-c", str(config)])

    assert code == 3
    err = capsys.readouterr().err
    assert f"{config}: eligibility.battery_min_percent: must be a number" in err
    assert not (tmp_path / "state").exists()  # the daemon never started


def test_exit_statuses_are_pinned() -> None:
    # Scripts and the systemd unit read these numbers; changing one is a conscious act.
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "USAGE": 2,
        "BAD_INPUT": 3,
        "REFUSED": 6,
        "ALREADY_RUNNING": 7,
        "INTERRUPTED": 130,
    }


def test_a_second_daemon_on_one_state_directory_exits_7_naming_the_first(
    tmp_path: Path, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, fleet)
    paths = DaemonPaths(tmp_path / "state")
    paths.state_dir.mkdir()

    with instance_lock(paths.lock_file, pid=4242, program="edge-daemon"):  # the first daemon
        code = main(["run", "-c", str(config)])

    assert code == ExitCode.ALREADY_RUNNING
    err = capsys.readouterr().err
    assert f"{paths.lock_file}: another edge-daemon (pid 4242)" in err
    assert "one daemon per state directory" in err
    assert not paths.status_file.exists()  # it never ran a step


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])

    assert caught.value.code == ExitCode.USAGE


# ---------------------------------------------------------------- status


def test_status_json_probes_when_no_daemon_has_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"on_power": False, "battery_percent": 20}))
    config = _config(tmp_path, extra=f"probe_file: {probe}\n")

    report = _status_json(capsys, "-c", str(config))

    assert set(report) == STATUS_KEYS
    assert report["format"] == "ticketfleet/edge-daemon-status" and report["version"] == 4
    assert report["eligible"] is False
    assert report["reasons"] == ["power: on battery 20% < 55%"]  # turn-on limit: 50 + margin 5
    assert report["verdict_source"] == "probe"
    assert datetime.fromisoformat(str(report["verdict_at"])).tzinfo is not None
    assert (report["node_running"], report["node_pid"]) == (False, None)
    assert (report["node_starts"], report["node_last_exit"]) == (0, None)
    assert (report["rounds_joined"], report["last_participation"]) == (0, None)
    assert (report["last_metrics"], report["bytes_sent"]) == ({}, 0)
    assert (report["cached_tickets"], report["readings"]) == ([], 0)
    assert (report["predict_model"], report["personalisation"]) == ("untrained", None)
    assert not (tmp_path / "state").exists()  # status writes nothing


def test_status_json_shows_the_daemons_verdict_state_tickets_and_readings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    config = _config(tmp_path, fleet)
    paths = DaemonPaths(tmp_path / "state")
    assert main(["ingest", "-c", str(config), str(_csv(tmp_path, "r.csv", *ROWS))]) == 0
    assert main(["tickets", "add", "-c", str(config), str(fleet / "fleet.ticket")]) == 0
    ticket_id = capsys.readouterr().out.splitlines()[-1].removeprefix("cached ")
    at = datetime(2025, 6, 1, 11, 58, 10, tzinfo=UTC)
    update_state(
        paths.state_file,
        lambda s: s.with_round(at=at, bytes_sent=1234, metrics={"loss": 0.5, "acc": float("nan")}),
    )
    paths.status_file.write_text(
        json.dumps(
            {
                "eligible": True,
                "reasons": [],
                "node_running": True,
                "node_pid": os.getpid(),  # alive
                "node_starts": 1,
                "updated_at": "2025-06-01T12:00:00+00:00",
            }
        )
    )

    report = _status_json(capsys, "-c", str(config))

    assert report == {
        "format": "ticketfleet/edge-daemon-status",
        "version": 4,
        "eligible": True,
        "reasons": [],
        "verdict_source": "daemon",
        "verdict_at": "2025-06-01T12:00:00+00:00",
        "node_running": True,
        "node_pid": os.getpid(),
        "node_starts": 1,
        "node_last_exit": None,
        "rounds_joined": 1,
        "last_participation": "2025-06-01T11:58:10+00:00",
        "last_metrics": {"loss": 0.5, "acc": None},
        "bytes_sent": 1234,
        "bytes_received": 0,
        "last_round": None,
        "cached_tickets": [ticket_id],
        "readings": 3,
        "predict_model": "untrained",
        "predict_model_why": "no global model received yet",
        "personalisation": None,
    }


def test_a_recorded_node_that_is_gone_is_not_running_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    status_file = DaemonPaths(tmp_path / "state").status_file
    status_file.parent.mkdir()
    status_file.write_text(
        json.dumps(
            {
                "eligible": False,
                "reasons": ["cpu: 80% busy > 30%"],
                "node_running": True,
                "node_pid": int(dead.stdout),
                "updated_at": "2025-06-01T12:00:00+00:00",
            }
        )
    )

    assert main(["status", "--json", "-c", str(config)]) == 0

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert (report["node_running"], report["node_pid"]) == (False, None)
    assert report["reasons"] == ["cpu: 80% busy > 30%"]
    assert f"records node pid {int(dead.stdout)}, which is not running" in captured.err


def test_a_damaged_status_file_falls_back_to_probing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = tmp_path / "probe.json"
    probe.write_text("{}")  # every condition at its easy default
    config = _config(tmp_path, extra=f"probe_file: {probe}\n")
    status_file = DaemonPaths(tmp_path / "state").status_file
    status_file.parent.mkdir()
    status_file.write_text('{"eligible": "yes"}')

    assert main(["status", "--json", "-c", str(config)]) == 0

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert (report["verdict_source"], report["eligible"]) == ("probe", True)
    assert f"{status_file}: eligible: expected true or false; probed" in captured.err


def test_status_probe_flag_ignores_the_daemons_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"network": "offline"}))
    config = _config(tmp_path, extra=f"probe_file: {probe}\n")
    status_file = DaemonPaths(tmp_path / "state").status_file
    status_file.parent.mkdir()
    status_file.write_text(
        json.dumps(
            {
                "eligible": True,
                "reasons": [],
                "node_running": False,
                "node_pid": None,
                "updated_at": "2025-06-01T12:00:00+00:00",
            }
        )
    )

    assert _status_json(capsys, "-c", str(config))["eligible"] is True
    report = _status_json(capsys, "-c", str(config), "--probe")

    assert (report["verdict_source"], report["eligible"]) == ("probe", False)
    assert report["reasons"] == [f"network: offline (probe file {probe})"]


def test_status_for_a_person(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"network": "metered"}))
    config = _config(tmp_path, extra=f"probe_file: {probe}\n")

    assert main(["status", "-c", str(config)]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "eligible        no (probed now)"
    assert lines[1].startswith("                - network: metered")
    assert "node            not running" in lines
    assert "readings        0" in lines and "cached tickets  none" in lines


def test_status_while_the_on_delay_runs_says_so_with_the_nodes_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    status_file = DaemonPaths(tmp_path / "state").status_file
    status_file.parent.mkdir()
    status_file.write_text(
        json.dumps(
            {
                "eligible": False,
                "reasons": ["eligible for 60 s of on_after_s 120 s"],
                "node_running": False,
                "node_pid": None,
                "node_starts": 2,
                "node_last_exit": -9,
                "updated_at": "2025-06-01T12:00:00+00:00",
            }
        )
    )

    assert main(["status", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    report = _status_json(capsys, "-c", str(config))

    assert lines[:2] == [
        "eligible        no (the daemon's verdict at 2025-06-01 12:00:00 UTC)",
        "                - eligible for 60 s of on_after_s 120 s",
    ]
    assert "node            not running, 2 starts, last exit killed by SIGKILL" in lines
    assert (report["node_starts"], report["node_last_exit"]) == (2, -9)


@pytest.mark.parametrize(
    ("record", "expected"),
    [({"node_starts": -1}, "node_starts: expected"), ({"node_last_exit": "x"}, "node_last_exit")],
)
def test_a_bad_node_history_in_the_status_file_falls_back_to_probing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], record: dict[str, object], expected: str
) -> None:
    probe = tmp_path / "probe.json"
    probe.write_text("{}")
    config = _config(tmp_path, extra=f"probe_file: {probe}\n")
    status_file = DaemonPaths(tmp_path / "state").status_file
    status_file.parent.mkdir()
    base = {"eligible": True, "reasons": [], "node_running": False, "node_pid": None}
    base["updated_at"] = "2025-06-01T12:00:00+00:00"
    status_file.write_text(json.dumps({**base, **record}))

    assert main(["status", "--json", "-c", str(config)]) == 0

    captured = capsys.readouterr()
    assert json.loads(captured.out)["verdict_source"] == "probe"
    assert f"{status_file}: {expected}" in captured.err


@pytest.mark.parametrize("key", ["fleet_key", "server.root_certificates", "server.auth_key"])
def test_run_with_a_key_file_missing_names_the_key_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    files = {name: tmp_path / name for name in ("fleet.pub", "ca.pem", "node.key")}
    for path in files.values():
        path.write_text("x")
    missing = {
        "fleet_key": "fleet.pub",
        "server.root_certificates": "ca.pem",
        "server.auth_key": "node.key",
    }[key]
    files[missing].unlink()
    config = tmp_path / "daemon.yaml"
    config.write_text(
        "state_dir: state\nfleet_key: fleet.pub\n"
        "server:\n  address: 127.0.0.1:9092\n  root_certificates: ca.pem\n"
        "  auth_key: node.key\n"
    )

    code = main(["run", "-c", str(config)])

    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert f"{config}: {key}: {tmp_path / missing}: no such file" in err
    assert not (tmp_path / "state").exists()  # the daemon never started


def test_idle_commands_do_not_load_torch(tmp_path: Path) -> None:
    # A real psutil probe (no probe_file), in a fresh interpreter: status and tickets list are
    # what a device owner runs beside the idle daemon.
    config = _config(tmp_path)
    code = (
        "import sys\n"
        "from edge_daemon.cli import main\n"
        f"assert main(['status', '--json', '--sample-s', '0.05', '-c', {str(config)!r}]) == 0\n"
        f"assert main(['tickets', 'list', '-c', {str(config)!r}]) == 0\n"
        "print(sorted({'torch', 'numpy', 'flwr'} & set(sys.modules)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )

    report = json.loads(completed.stdout[: completed.stdout.rindex("}") + 1])
    assert report["verdict_source"] == "probe" and isinstance(report["eligible"], bool)
    assert completed.stdout.splitlines()[-1] == "[]"


# ---------------------------------------------------------------- keygen


def test_keygen_prints_the_public_key_and_how_to_enroll(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "node.key"

    assert main(["keygen", "--out", str(out), "--comment", "clinic-3"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (tmp_path / "node.key.pub").read_text().strip()
    assert lines[0].startswith("ecdsa-sha2-nistp384 AAAA") and lines[0].endswith(" clinic-3")
    assert lines[-1] == (
        "  fleet-server enroll node.key.pub --name clinic-3 -c /etc/fleet-server/server.yaml"
    )
    assert oct(out.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("comment", "name"),
    [
        ("edge-daemon@pi-7.lan", "pi-7.lan"),
        ("clinic 3's box", "clinic-3-s-box"),
        ("x@---", "device"),
    ],
)
def test_keygen_enroll_hint_is_a_command_fleet_server_accepts(comment: str, name: str) -> None:
    # The operator pastes the printed line: it must parse as `fleet-server enroll` (the
    # server's own parser) with the key file, a valid --name and the config.
    from server.cli import build_parser as server_parser
    from server.cli import run_enroll

    argv = shlex.split(enroll_command("node.key.pub", comment))

    assert argv[:2] == ["fleet-server", "enroll"]
    args = server_parser().parse_args(argv[1:])
    assert args.handler is run_enroll and args.key == Path("node.key.pub")
    assert args.name == name and args.config == Path("/etc/fleet-server/server.yaml")


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "node.key"
    assert main(["keygen", "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()

    assert main(["keygen", "--out", str(out)]) == 3
    assert f"edge-daemon keygen: error: {out} already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["keygen", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != before


# ---------------------------------------------------------------- tickets


def test_tickets_add_then_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    config = _config(tmp_path, fleet)

    assert main(["tickets", "add", "-c", str(config), str(fleet / "fleet.ticket")]) == 0
    ticket_id = capsys.readouterr().out.strip().removeprefix("cached ")
    assert main(["tickets", "list", "-c", str(config)]) == 0

    assert capsys.readouterr().out == f"{ticket_id}\n"
    assert (DaemonPaths(tmp_path / "state").tickets_dir / f"{ticket_id}.ticket").is_file()


def test_a_ticket_signed_by_another_key_is_refused_with_status_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    config = _config(tmp_path, fleet)

    code = main(["tickets", "add", "-c", str(config), str(fleet / "other.ticket")])

    assert code == ExitCode.REFUSED
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"edge-daemon tickets add: error: {fleet / 'other.ticket'}: refused")
    assert "not trusted" in err[0] and err[1].startswith("  hint: ")
    assert main(["tickets", "list", "-c", str(config)]) == 0
    assert capsys.readouterr().out == ""


def test_tickets_add_of_a_missing_file_is_bad_input_not_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    config = _config(tmp_path, fleet)

    code = main(["tickets", "add", "-c", str(config), str(tmp_path / "nope.ticket")])

    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'nope.ticket'}: cannot read: No such file" in err
    assert "fleet operator" not in err  # not the hint for a tampered ticket


def test_tickets_add_with_a_missing_fleet_key_is_a_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    config = _config(tmp_path)  # fleet_key points at a file that does not exist

    code = main(["tickets", "add", "-c", str(config), str(fleet / "fleet.ticket")])

    assert code == 3
    assert f"{tmp_path / 'fleet.pub'}: cannot read the fleet key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000, "levels deep; a config may nest at most"),
        ("#" * 60_000_000, "bytes is over the 1048576-byte limit for a config"),
    ],
    ids=["100k-brackets", "60MB"],
)
def test_a_hostile_config_is_refused_cleanly_by_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text(content)

    code = main(["run", "-c", str(config)])

    assert code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"edge-daemon run: error: {config}: ") and message in err
    assert "Traceback" not in err and "RecursionError" not in err
