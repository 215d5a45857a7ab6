"""deploy/examples/daemon.yaml loads and documents every key; the systemd unit runs the CLI."""

import dataclasses
import shlex
import typing
from pathlib import Path
from typing import Any

import yaml

from edge_daemon.cli import build_parser
from edge_daemon.config import DaemonConfig, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "examples" / "daemon.yaml"
UNIT = DEPLOY / "systemd" / "edge-daemon.service"


def _schema_keys(schema: Any, prefix: str = "") -> set[str]:
    keys = set()
    for spec, hint in zip(
        dataclasses.fields(schema), typing.get_type_hints(schema).values(), strict=True
    ):
        keys.add(prefix + spec.name)
        if dataclasses.is_dataclass(hint) and spec.name != "time_windows":
            keys |= _schema_keys(hint, f"{prefix}{spec.name}.")
    return keys


def _file_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        keys.add(prefix + name)
        if isinstance(value, dict):
            keys |= _file_keys(value, f"{prefix}{name}.")
    return keys


def test_example_daemon_yaml_loads() -> None:
    config = load_config(EXAMPLE)

    assert config.state_dir == Path("/var/lib/edge-daemon")  # the unit's StateDirectory=
    assert config.fleet_key == EXAMPLE.parent / "fleet.pub"  # relative to the file
    assert config.server.auth_key == EXAMPLE.parent / "node.key"
    assert not config.server.insecure


def test_example_daemon_yaml_shows_every_key_of_the_schema() -> None:
    # A new key in config.py must be documented in the example too.
    assert _file_keys(yaml.safe_load(EXAMPLE.read_text())) == _schema_keys(DaemonConfig)


def _unit() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_systemd_unit_runs_the_daemon_with_the_installed_config() -> None:
    argv = shlex.split(_unit()["ExecStart"])

    # An absolute path: systemd's PATH does not hold a virtual environment's bin directory.
    assert Path(argv[0]).is_absolute() and argv[0].endswith("/bin/edge-daemon")
    args = build_parser().parse_args(argv[1:])
    assert args.name == "run" and args.config == Path("/etc/edge-daemon/daemon.yaml")


def test_systemd_unit_is_hardened_and_outlasts_the_supervisor_grace() -> None:
    unit = _unit()

    assert unit["StateDirectory"] == "edge-daemon"
    assert unit["ProtectSystem"] == "strict" and unit["ProtectHome"] == "yes"
    assert unit["NoNewPrivileges"] == "yes" and unit["CapabilityBoundingSet"] == ""
    assert unit["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert unit["KillMode"] == "control-group" and unit["Restart"] == "on-failure"
    assert float(unit["TimeoutStopSec"]) > load_config(EXAMPLE).supervisor.grace_s


def test_example_readings_ingest_as_documented(tmp_path: Path) -> None:
    from edge_daemon.readings import ReadingsStore

    example = DEPLOY / "examples" / "readings.csv"
    with ReadingsStore(tmp_path / "r.sqlite3") as store:
        result = store.ingest_csv(example)
        assert (result.rows_added, result.rows_unlabelled) == (4, 1)
        assert store.count() == 3 and store.count_unlabelled() == 1
    # The excerpt in docs/device-owner.md is lines of the file, not a second copy that drifts.
    doc = (DEPLOY.parent / "docs" / "device-owner.md").read_text()
    excerpt = doc.split("```csv\n", 1)[1].split("```", 1)[0].splitlines()
    assert set(excerpt) <= set(example.read_text().splitlines()) and len(excerpt) == 4
