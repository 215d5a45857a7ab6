"""`fleet-server` commands without a SuperLink: exit codes, one-line errors with a hint."""

import dataclasses
import json
import shlex
import stat
from pathlib import Path

import pytest

from server.cli import build_parser, main
from server.config import load_config
from server.exit_codes import ExitCode
from server.fleet import FleetServer
from ticket.atomic import instance_lock
from ticket.crypto import generate_node_auth_key

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "server.yaml"


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "server.yaml"
    # Port 9 (discard) on loopback: nothing listens there in a test environment.
    path.write_text("state_dir: state\nlisten: {host: 127.0.0.1, port: 9}\nrun: {ticket: t}\n")
    return path


def test_init_twice_creates_then_keeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)

    assert main(["init", "-c", str(config), "--hosts", "127.0.0.1,localhost"]) == ExitCode.OK
    first = capsys.readouterr().out
    assert main(["init", "-c", str(config)]) == ExitCode.OK
    second = capsys.readouterr().out

    assert "created" in first and "fleet.key" in first
    assert "created" not in second and "kept" in second
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_a_bad_config_exits_3_with_one_line_and_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("state_dir: s\nrun: {ticket: t, num_rounds: many}\n")

    assert main(["status", "-c", str(config)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"fleet-server status: error: {config}: run.num_rounds: must be")
    assert err[1].startswith("  hint: ") and len(err) == 2


def test_enroll_refuses_a_malformed_key_before_asking_the_superlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    key = tmp_path / "node.key.pub"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")

    assert main(["enroll", str(key), "--name", "a", "-c", str(config)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("fleet-server enroll: error: ")  # the command, not --name's value
    assert "not an OpenSSH public key line" in err


def test_enroll_needs_a_running_superlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert main(["init", "-c", str(config)]) == ExitCode.OK
    key = tmp_path / "node.key.pub"
    key.write_text(generate_node_auth_key("clinic")[1] + "\n")

    assert main(["enroll", str(key), "--name", "a", "-c", str(config)]) == ExitCode.FAILURE
    err = capsys.readouterr().err
    assert "start `fleet-server run` first" in err and "Traceback" not in err
    assert not (tmp_path / "state" / "nodes.json").exists()


def test_nodes_and_status_work_while_the_server_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    main(["init", "-c", str(config)])
    capsys.readouterr()

    assert main(["nodes", "--json", "-c", str(config)]) == ExitCode.OK
    nodes = json.loads(capsys.readouterr().out)
    assert main(["status", "--json", "-c", str(config)]) == ExitCode.OK
    status = json.loads(capsys.readouterr().out)

    assert nodes == {"superlink_running": False, "as_of": None, "nodes": []}
    assert status["last_round"] == 0 and status["run_id"] is None
    assert status["run_dir"] == str(tmp_path / "state" / "runs" / "main")


def test_status_names_the_active_ticket_or_says_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    from server.deployments import DeploymentLedger

    config = tmp_path / "server.yaml"
    config.write_text(
        "state_dir: state\nlisten: {host: 127.0.0.1, port: 9}\nrun: {num_rounds: 2}\n"
    )

    assert main(["status", "-c", str(config)]) == ExitCode.OK
    assert "active ticket: none yet" in capsys.readouterr().out
    ledger = DeploymentLedger(tmp_path / "state" / "deployments")
    ledger.record("deploy", "c" * 64, succeeded=True, at=datetime.now(UTC))
    assert main(["status", "--json", "-c", str(config)]) == ExitCode.OK

    status = json.loads(capsys.readouterr().out)
    assert status["active_ticket"] == "c" * 64
    assert status["run_dir"] == str(tmp_path / "state" / "runs" / f"main-{'c' * 12}")


def _unit() -> dict[str, str]:
    unit = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "fleet-server.service"
    settings = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_the_systemd_unit_runs_fleet_server_hardened() -> None:
    unit = _unit()
    for key, command in (("ExecStartPre", "init"), ("ExecStart", "run")):
        argv = shlex.split(unit[key])
        assert argv[:2] == ["/usr/bin/env", "fleet-server"]
        args = build_parser().parse_args(argv[2:])
        assert args.command == command and args.config == Path("/etc/fleet-server/server.yaml")
    assert unit["StateDirectory"] == "fleet-server" and unit["StateDirectoryMode"] == "0700"
    assert unit["ProtectSystem"] == "strict" and unit["NoNewPrivileges"] == "yes"
    assert unit["CapabilityBoundingSet"] == "" and unit["Restart"] == "on-failure"
    assert "130" in unit["SuccessExitStatus"].split()  # a stop by SIGTERM is a clean exit
    assert float(unit["TimeoutStopSec"]) > FleetServer(load_config(EXAMPLE)).grace_s + 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000, "levels deep; a config may nest at most"),
        ("#" * 60_000_000, "bytes is over the 1048576-byte limit for a config"),
    ],
    ids=["100k-brackets", "60MB"],
)
@pytest.mark.parametrize("command", ["status", "run"])
def test_a_hostile_config_is_refused_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str, command: str
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(content)

    assert main([command, "-c", str(config)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"fleet-server {command}: error: {config}: ") and message in err
    assert "Traceback" not in err and "RecursionError" not in err


def test_exit_statuses_are_pinned() -> None:
    # The systemd unit and scripts read these numbers; changing one is a conscious act.
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "USAGE": 2,
        "BAD_INPUT": 3,
        "ALREADY_RUNNING": 7,
        "INTERRUPTED": 130,
    }


def test_a_second_run_on_one_state_directory_exits_7_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    (tmp_path / "t").write_text("a ticket file")  # run.ticket: only its presence is checked
    assert main(["init", "-c", str(config)]) == ExitCode.OK
    paths = load_config(config).paths
    paths.pid_file.write_text("the first run's record")
    capsys.readouterr()

    with instance_lock(paths.lock_file, pid=4242, program="fleet-server run"):  # the first run
        code = main(["run", "-c", str(config)])

    assert code == ExitCode.ALREADY_RUNNING
    assert "another fleet-server run (pid 4242)" in capsys.readouterr().err
    # The first run's processes were not taken for leftovers of a killed one.
    assert paths.pid_file.read_text() == "the first run's record"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--target-density", "0"], "--target-density: must be a number in (0, 1], got 0.0"),
        (["--target-density", "1.5"], "--target-density: must be a number in (0, 1], got 1.5"),
        (["--rate", "0.99"], "--rate: must be a number in (0, 0.95], got 0.99"),
        (["--rounds-per-level", "0"], "--rounds-per-level"),
        (["--rewind-round", "4"], "--rewind-round must be at most --rounds-per-level"),
        (["--lr", "-0.5"], "--lr: must be a number >= 0, got -0.5"),
        (["--batch-size", "-1"], "--batch-size: must be a whole number >= 0, got -1"),
        ([], "no such ticket to search in"),  # TICKET does not exist
    ],
)
def test_find_names_the_bad_option_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    config = _config(tmp_path)
    assert main(["init", "-c", str(config)]) == ExitCode.OK
    capsys.readouterr()
    code = main(["find", str(tmp_path / "dense.ticket"), "--out", str(tmp_path / "f.ticket"),
                 "-c", str(config), *options])  # fmt: skip
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT, err
    assert err.startswith("fleet-server find: error: ") and message in err, err
    assert not (tmp_path / "state" / "fleet-server.pid").exists()


@pytest.mark.parametrize(
    ("arguments", "yaml", "message"),
    [
        (["d.ticket", "--fit-encoding", "--model", "heart-mlp"], "", "give TICKET"),
        ([], "", "give TICKET (a dense ticket to search in) or --fit-encoding"),
        (["d.ticket", "--model", "heart-mlp"], "", "--model goes with --fit-encoding"),
        (["--fit-encoding"], "", "--fit-encoding needs --model"),
        (["--fit-encoding", "--model", "heart-mlp", "--plaintext"], "", "no --plaintext"),
        (
            ["--fit-encoding", "--model", "heart-mlp"],
            ", secagg: true, dp_noise_multiplier: 1.0, dp_clip_norm: 0.5",
            "DP noise on the encoding's counts is not built",
        ),
    ],
)
def test_find_takes_a_ticket_or_fits_the_encoding_never_both(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    yaml: str,
    message: str,
) -> None:
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("ticket: t}", f"ticket: t{yaml}}}"))
    code = main(["find", *arguments, "--out", str(tmp_path / "f.ticket"), "-c", str(config)])
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT, err
    assert message in err, err
    assert not (tmp_path / "state" / "fleet-server.pid").exists()


def test_find_refuses_an_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["find", "d.ticket", "--out", "f.ticket", "--method", "imp2"])
    assert exit_.value.code == 2
    assert "invalid choice: 'imp2'" in capsys.readouterr().err


def test_find_keeps_an_existing_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    (tmp_path / "f.ticket").write_bytes(b"earlier")
    code = main(["find", "d.ticket", "--out", str(tmp_path / "f.ticket"), "-c", str(config)])
    assert code == ExitCode.BAD_INPUT
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "f.ticket").read_bytes() == b"earlier"


class _FakeFlower:
    """The `flwr` CLI as enroll uses it: registration hands out node ids."""

    def __init__(self) -> None:
        self.registered: list[str] = []

    def register_node(self, key: Path, *, name: str) -> int:
        self.registered.append(name)
        return 4242


def test_enroll_certifies_the_node_key_as_its_secure_aggregation_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server import cli
    from server.enrolment import EnrolmentRecords, load_roster
    from ticket.crypto import identity_of_public_line, verify
    from ticket.secagg.identity import certificate_statement

    config = _config(tmp_path)
    assert main(["init", "-c", str(config)]) == ExitCode.OK
    flower = _FakeFlower()
    monkeypatch.setattr(cli, "flower_cli", lambda config: flower)
    monkeypatch.setattr(cli, "_require_superlink", lambda config: None)
    key = tmp_path / "node.key.pub"
    line = generate_node_auth_key("clinic")[1]
    key.write_text(line + "\n")

    assert main(["enroll", str(key), "--name", "a", "-c", str(config)]) == ExitCode.OK

    assert "certified node 4242's key" in capsys.readouterr().out
    nodes = tmp_path / "state" / "nodes.json"
    roster = load_roster(nodes)
    assert roster[4242].identity == identity_of_public_line(line.encode())
    fleet = (tmp_path / "state" / "keys" / "fleet.pub").read_bytes()
    verify(fleet, certificate_statement(4242, roster[4242].identity), roster[4242].certificate)
    # A record made before certificates existed is certified by enrolling the key again,
    # without registering it a second time.
    records = EnrolmentRecords(nodes)
    [entry] = records.read()
    records.add(dataclasses.replace(entry, secagg_certificate=""))
    assert main(["enroll", str(key), "--name", "a", "-c", str(config)]) == ExitCode.OK
    assert load_roster(nodes) == roster and flower.registered == ["a"]


def test_find_while_the_service_runs_queues_the_search_for_it_and_signs_the_result(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ticket_path: Path,
) -> None:
    import os

    from server.search_jobs import DONE, RUNNING, SearchQueue
    from server.service_state import TRAINING, ServicePublisher
    from ticket.bundle import read_ticket

    config_path = _config(tmp_path)
    assert main(["init", "-c", str(config_path)]) == ExitCode.OK
    config = load_config(config_path)
    ServicePublisher(config.paths.service_file, os.getpid()).update(phase=TRAINING)
    dense, out = tmp_path / "dense.ticket", tmp_path / "found.ticket"
    dense.write_bytes(ticket_path.read_bytes())
    queue = SearchQueue(config.paths.jobs_dir)
    polls: list[str] = []

    def service_at_work(seconds: float) -> None:  # what the service does between two polls
        request = queue.request("find-found")
        polls.append(request.settings.search_method)
        if len(polls) == 1:
            queue.set_status("find-found", RUNNING, "level-001 finished")
        else:
            request.out.write_bytes(ticket_path.read_bytes())
            queue.set_status("find-found", DONE, "finished:completed")

    monkeypatch.setattr("server.cli.time.sleep", service_at_work)
    capsys.readouterr()
    code = main(["find", str(dense), "--out", str(out), "-c", str(config_path),
                 "--method", "fed-snip", "--plaintext"])  # fmt: skip

    printed = capsys.readouterr().out
    assert code == ExitCode.OK, printed
    assert polls == ["fed-snip", "fed-snip"]
    assert queue.request("find-found").plaintext is True
    assert f"queued fleet search find-found for the running service (pid {os.getpid()})" in printed
    assert "search find-found: running: level-001 finished" in printed
    assert "signed with" in printed
    read_ticket(out, trusted_keys=[config.fleet_public_key.read_bytes()])  # the fleet key's
    assert not config.paths.pid_file.exists()  # no SuperLink of its own was started


def test_find_fails_clearly_when_the_service_stops_before_the_search_ends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from server.service_state import STOPPED, TRAINING, ServicePublisher

    config_path = _config(tmp_path)
    assert main(["init", "-c", str(config_path)]) == ExitCode.OK
    config = load_config(config_path)
    publisher = ServicePublisher(config.paths.service_file, os.getpid())
    publisher.update(phase=TRAINING)
    (tmp_path / "dense.ticket").write_bytes(b"a dense ticket")
    monkeypatch.setattr("server.cli.time.sleep", lambda s: publisher.update(phase=STOPPED))
    code = main(["find", str(tmp_path / "dense.ticket"), "--out", str(tmp_path / "f.ticket"),
                 "-c", str(config_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == ExitCode.FAILURE, err
    assert "fleet-server run stopped before search find-f finished; start it again" in err


# ---------------------------------------------------------------- a missing server.yaml


def test_a_missing_config_says_how_to_write_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "server.yaml"

    assert main(["status", "-c", str(missing)]) == ExitCode.BAD_INPUT

    err = capsys.readouterr().err
    assert f"{missing}: no such file" in err
    assert f"fleet-server init --write-config {missing}" in err
    assert str(EXAMPLE) in err  # found from the installed package, which is this source tree


def test_init_write_config_writes_the_example_with_the_chosen_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "etc" / "server.yaml"
    path.parent.mkdir()

    argv = ["init", "--write-config", str(path), "--state-dir", str(tmp_path / "st")]
    assert main(argv) == ExitCode.OK

    assert f"fleet-server init -c {path}" in capsys.readouterr().out
    assert load_config(path).state_dir == tmp_path / "st"
    written, example = path.read_text().splitlines(), EXAMPLE.read_text().splitlines()
    differing = [pair for pair in zip(written, example, strict=True) if pair[0] != pair[1]]
    assert len(differing) == 1 and differing[0][0].startswith("state_dir: ")
    # Then the usual next step works on it.
    assert main(["init", "-c", str(path), "--hosts", "127.0.0.1"]) == ExitCode.OK


def test_init_write_config_defaults_to_the_examples_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"

    assert main(["init", "--write-config", str(path)]) == ExitCode.OK

    assert path.read_text() == EXAMPLE.read_text()
    assert load_config(path).state_dir == Path("/var/lib/fleet-server")


def test_init_write_config_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("state_dir: mine\n")

    assert main(["init", "--write-config", str(path)]) == ExitCode.BAD_INPUT

    assert path.read_text() == "state_dir: mine\n"
    assert f"{path} already exists; it is left as it is" in capsys.readouterr().err


def test_state_dir_without_write_config_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["init", "--state-dir", "x"])
    assert exited.value.code == ExitCode.USAGE


def test_a_metrics_scrape_never_runs_the_flwr_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `run --metrics-port`'s scrapes read the run log only: with the SuperLink up and a run
    # submitted, a scrape that asked the `flwr` CLI for the run's state would fail here.
    import urllib.request

    from server import cli, metrics

    config = _config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "run.json").write_text('{"run_id": 7}')
    served: list[int] = []
    scraped: list[str] = []
    real_serve = metrics.serve_metrics

    def serve(*args: object, **kwargs: object) -> object:
        server = real_serve(*args, **kwargs)  # type: ignore[arg-type]
        served.append(server.server_port)
        return server

    class FakeFleet:
        def __init__(self, config: object) -> None:
            pass

        def run(self) -> str:  # while the run goes on, Prometheus scrapes
            url = f"http://127.0.0.1:{served[0]}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                scraped.append(response.read().decode())
            return cli.COMPLETED_STATUS

    def no_flwr(config: object) -> object:
        raise AssertionError("a scrape ran the flwr CLI")

    monkeypatch.setattr(metrics, "serve_metrics", serve)
    monkeypatch.setattr(cli, "FleetServer", FakeFleet)
    monkeypatch.setattr(cli, "flower_cli", no_flwr)
    monkeypatch.setattr(cli, "_superlink_up", lambda config: True)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)

    assert main(["run", "-c", str(config), "--metrics-port", "0"]) == ExitCode.OK

    assert "ticketfleet_rounds_planned" in scraped[0]


def test_nodes_shows_the_running_services_fresh_list_without_asking_the_superlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    from datetime import UTC, datetime, timedelta

    from server import cli
    from server.node_snapshot import write_snapshot
    from server.service_state import TRAINING, ServicePublisher

    config_path = _config(tmp_path)
    config = load_config(config_path)
    config.state_dir.mkdir()
    ServicePublisher(config.paths.service_file, os.getpid()).update(phase=TRAINING)
    node = {"node-id": 7, "status": "online", "online-at": "2026-12-03T06:00:00+00:00"}
    write_snapshot(config.paths.nodes_snapshot, [node], datetime.now(UTC))

    def no_flwr(config: object) -> object:
        raise AssertionError("nodes asked the SuperLink")

    monkeypatch.setattr(cli, "flower_cli", no_flwr)
    assert main(["nodes", "--json", "-c", str(config_path)]) == ExitCode.OK
    listed = json.loads(capsys.readouterr().out)
    assert listed["as_of"] is not None and listed["superlink_running"] is True
    assert [(row["node_id"], row["status"]) for row in listed["nodes"]] == [(7, "online")]

    stale = datetime.now(UTC) - timedelta(seconds=600)
    write_snapshot(config.paths.nodes_snapshot, [node], stale)
    monkeypatch.setattr(cli, "_superlink_up", lambda config: False)
    assert main(["nodes", "--json", "-c", str(config_path)]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["superlink_running"] is False  # stale: not used
