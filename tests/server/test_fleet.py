"""`fleet-server init`: the state directory, the development PKI and the fleet key, idempotent;
and the checks `run` makes before it starts anything."""

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from server.config import FleetConfig, load_config
from server.deployments import DeploymentLedger
from server.fleet import FleetError, FleetServer, init_state, training_target, write_app
from server.processes import PidFile, Recorded
from ticket import crypto


def _config(tmp_path: Path, extra: str = "") -> FleetConfig:
    path = tmp_path / "server.yaml"
    path.write_text(
        "state_dir: state\nlisten: {host: 10.0.0.5, port: 9092}\nrun: {ticket: t.ticket}\n" + extra
    )
    return load_config(path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_private_state_dir_pki_and_fleet_key(tmp_path: Path) -> None:
    config = _config(tmp_path)

    report = init_state(config, ["127.0.0.1", "fleet.example.org"])

    assert _mode(config.state_dir) == 0o700
    tls = config.tls_files
    assert set(report.created) >= {tls.ca_cert, tls.server_cert, tls.server_key}
    assert _mode(tls.server_key) == 0o600 and _mode(config.fleet_private_key) == 0o600
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fleet.example.org"]
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.0.0.5",  # the listen address joins the names given
    }
    # `ticket keygen`'s kind of key: the private half signs, the public one verifies.
    private = config.fleet_private_key.read_bytes()
    assert crypto.public_key_of(private) == config.fleet_public_key.read_bytes()
    toml = (config.paths.cli_home / "config.toml").read_text()
    assert 'address = "10.0.0.5:9092"' in toml and "root-certificates" in toml


def test_init_again_overwrites_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    init_state(config)
    files = [config.fleet_private_key, config.fleet_public_key, *vars(config.tls_files).values()]
    before = {path: path.read_bytes() for path in files}

    report = init_state(config)

    assert report.created == [] and set(report.kept) == set(files)
    assert {path: path.read_bytes() for path in files} == before


def test_init_derives_a_missing_public_key_from_the_private_one(tmp_path: Path) -> None:
    config = _config(tmp_path)
    init_state(config)
    expected = config.fleet_public_key.read_bytes()
    config.fleet_public_key.unlink()

    init_state(config)

    assert config.fleet_public_key.read_bytes() == expected


def test_the_operators_own_files_are_used_not_made(tmp_path: Path) -> None:
    pki = tmp_path / "own"
    pki.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (pki / name).write_text("x")
    extra = (
        "tls: {ca_cert: own/ca.pem, server_cert: own/cert.pem, server_key: own/key.pem}\n"
        "fleet_key: own/fleet.pub\n"
    )
    config = _config(tmp_path, extra)
    with pytest.raises(FleetError, match=r"fleet_key: .*own/fleet.pub: no such file"):
        init_state(config)
    _, public = crypto.generate_signing_key()
    (pki / "fleet.pub").write_bytes(public)

    report = init_state(config)

    assert not config.paths.pki_dir.exists() and not config.paths.keys_dir.exists()
    assert pki / "ca.pem" in report.kept and report.created == []


def test_run_refuses_without_init_or_ticket(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(FleetError, match="run `fleet-server init`"):
        FleetServer(config).run()
    init_state(config)
    with pytest.raises(FleetError, match=r"run.ticket: .*t.ticket: no such file"):
        FleetServer(config).run()


def test_run_refuses_while_another_fleet_server_runs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    init_state(config)
    (tmp_path / "t.ticket").write_bytes(b"stand-in")
    # Our parent stands in for a live fleet-server recorded in the pid file.
    import os

    PidFile(config.paths.pid_file).write(Recorded.of("fleet-server", os.getppid()), [])

    with pytest.raises(FleetError, match=f"already running .*pid {os.getppid()}"):
        FleetServer(config).run()
    assert config.paths.pid_file.exists()  # still the live server's


def test_the_flower_app_is_written_into_the_state_dir_and_builds(tmp_path: Path) -> None:
    import tomllib

    from flwr.cli.build import build_fab_from_disk

    from ticket import runconfig

    config = _config(tmp_path)

    app = write_app(config)

    assert app == config.state_dir / "app" and [p.name for p in app.iterdir()] == ["pyproject.toml"]
    pyproject = tomllib.loads((app / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == runconfig.to_run_config(
        runconfig.RunConfig()
    )
    assert build_fab_from_disk(app)  # what `flwr run` submits: Flower validates it first


def test_without_run_ticket_the_active_ticket_trains_in_a_run_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("state_dir: state\nrun: {name: clinic}\n")
    config = load_config(path)
    with pytest.raises(FleetError, match="no ticket is active: roll one out with `ticket deploy"):
        training_target(config)
    ledger = DeploymentLedger(config.paths.deployments)
    first, second = "a" * 64, "b" * 64
    for ticket_id in (first, second):
        ledger.keep_bundle(ticket_id, b"bundle")
        ledger.record("deploy", ticket_id, succeeded=True, at=datetime.now(UTC))

    target = training_target(config)

    assert target.ticket_id == second and target.ticket == ledger.bundle(second)
    assert target.run_dir == config.state_dir / "runs" / f"clinic-{'b' * 12}"
    ledger.record("rollback", first, succeeded=True, at=datetime.now(UTC))
    assert training_target(config).run_dir.name == f"clinic-{'a' * 12}"


def test_a_configured_ticket_trains_in_runs_name(tmp_path: Path) -> None:
    config = _config(tmp_path)
    target = training_target(config)
    assert (target.ticket, target.ticket_id) == (tmp_path / "t.ticket", None)
    assert target.run_dir == config.state_dir / "runs" / "main"
