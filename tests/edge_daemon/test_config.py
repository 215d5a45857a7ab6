"""daemon.yaml -> DaemonConfig: defaults, path resolution, and errors that name file and key."""

from datetime import time
from pathlib import Path
from typing import Any

import pytest

from edge_daemon.config import ConfigError, DaemonConfig, PersonaliseConfig, load_config
from edge_daemon.eligibility import EligibilityPolicy, TimeWindow

MINIMAL = """\
state_dir: state
fleet_key: keys/fleet.pub
server:
  address: fleet.example.org:9092
  root_certificates: certs/ca.pem
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, text))
    return str(caught.value)


def test_personalise_defaults_and_a_full_section(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, MINIMAL)).personalise == PersonaliseConfig(
        enabled=True, layers="last", epochs=20, lr=0.001, batch_size=32, min_train_rows=20,
        min_held_out_rows=5,
    )  # fmt: skip
    text = MINIMAL + (
        "personalise:\n  enabled: false\n  layers: all\n  epochs: 5\n  lr: 0.01\n"
        "  batch_size: 8\n  min_train_rows: 40\n  min_held_out_rows: 10\n"
    )

    config = load_config(_write(tmp_path, text))

    assert config.personalise == PersonaliseConfig(False, "all", 5, 0.01, 8, 40, 10)


def test_minimal_file_gets_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))

    assert isinstance(config, DaemonConfig)
    assert config.state_dir == tmp_path / "state"
    assert config.fleet_key == tmp_path / "keys" / "fleet.pub"
    assert config.server.root_certificates == tmp_path / "certs" / "ca.pem"
    assert config.server.auth_key is None
    assert config.data.schema == "heart-uci"
    assert config.data.retention_rows is None
    assert config.eligibility == EligibilityPolicy()
    assert config.supervisor.backoff_max_s == 300.0


def test_full_file_is_read_into_typed_fields(tmp_path: Path) -> None:
    text = MINIMAL + (
        "  auth_key: /etc/edge/node.key\n"
        "data:\n  retention_rows: 5000\n  retention_days: 30\n"
        "eligibility:\n"
        "  battery_min_percent: null\n"
        "  cpu_busy_max_percent: 20\n"
        "  time_windows: ['22:00-06:00', '12:30-13:30']\n"
        "  unmetered_only: false\n"
        "supervisor:\n  grace_s: 0\n  jitter: 0.5\n"
    )

    config = load_config(_write(tmp_path, text))

    assert config.server.auth_key == Path("/etc/edge/node.key")  # absolute stays absolute
    assert config.data.retention_rows == 5000
    assert config.data.retention_days == 30.0
    assert isinstance(config.data.retention_days, float)
    assert config.eligibility.battery_min_percent is None
    assert config.eligibility.cpu_busy_max_percent == 20.0
    assert config.eligibility.time_windows == (
        TimeWindow(time(22, 0), time(6, 0)),
        TimeWindow(time(12, 30), time(13, 30)),
    )
    assert config.eligibility.unmetered_only is False
    assert config.supervisor.grace_s == 0.0
    assert config.supervisor.jitter == 0.5


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "eligibility:\n  battery_min_percent: x\n",
            "daemon.yaml: eligibility.battery_min_percent: must be a number in [0, 100], got 'x'",
        ),
        (
            "eligibility:\n  battery_min_percent: 101\n",
            "eligibility.battery_min_percent: must be a number in [0, 100], got 101",
        ),
        (
            "eligibility:\n  unmetered_only: 1\n",
            "eligibility.unmetered_only: must be true or false, got 1",
        ),
        (
            "eligibility:\n  batery_min_percent: 50\n",
            "eligibility.batery_min_percent: unknown key; expected one of: battery_min_percent",
        ),
        (
            "eligibility:\n  time_windows: ['22:00-22:00']\n",
            "eligibility.time_windows[0]: start equals end",
        ),
        (
            "eligibility:\n  time_windows: ['10pm-6am']\n",
            'eligibility.time_windows[0]: expected "HH:MM-HH:MM"',
        ),
        (
            "eligibility:\n  time_windows: '22:00-06:00'\n",
            "eligibility.time_windows: must be a list",
        ),
        (
            "eligibility:\n  on_after_s: -1\n",
            "eligibility.on_after_s: must be a number >= 0, got -1",
        ),
        (
            "eligibility:\n  cpu_window_s: 0\n",
            "eligibility.cpu_window_s: must be a number > 0, got 0",
        ),
        ("eligibility: []\n", "eligibility: must be a mapping of keys, got []"),
        (
            "data:\n  retention_rows: 2.5\n",
            "data.retention_rows: must be a whole number >= 1, got 2.5",
        ),
        (
            "data:\n  retention_rows: true\n",
            "data.retention_rows: must be a whole number >= 1, got true",
        ),
        ("data:\n  schema: mnist\n", "data.schema: must be one of: heart-uci; got 'mnist'"),
        ("supervisor:\n  jitter: 2\n", "supervisor.jitter: must be a number in [0, 1], got 2"),
        (
            "supervisor:\n  backoff_initial_s: 10\n  backoff_max_s: 5\n",
            "supervisor.backoff_max_s: must be >= supervisor.backoff_initial_s",
        ),
        ("colour: blue\n", "daemon.yaml: colour: unknown key"),
        (
            "personalise:\n  layers: first\n",
            "daemon.yaml: personalise.layers: must be one of: last, all; got 'first'",
        ),
        (
            "personalise:\n  epochs: 0\n",
            "personalise.epochs: must be a whole number in [1, 10000], got 0",
        ),
        ("personalise:\n  lr: 0\n", "personalise.lr: must be a number in (0, 10], got 0"),
        (
            "personalise:\n  batch_size: 8.5\n",
            "personalise.batch_size: must be a whole number",
        ),
        (
            "personalise:\n  min_train_rows: 0\n",
            "personalise.min_train_rows: must be a whole number >= 1, got 0",
        ),
        (
            "personalise:\n  min_held_out_rows: -2\n",
            "personalise.min_held_out_rows: must be a whole number >= 1, got -2",
        ),
        ("personalise:\n  enabled: maybe\n", "personalise.enabled: must be true or false"),
        ("personalise:\n  layer: last\n", "daemon.yaml: personalise.layer: unknown key"),
        ("personalise: 5\n", "daemon.yaml: personalise: must be a mapping of keys, got 5"),
    ],
)
def test_bad_values_name_file_and_dotted_key(tmp_path: Path, extra: str, expected: str) -> None:
    assert expected in _error(tmp_path, MINIMAL + extra)


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    assert _error(tmp_path, "fleet_key: f.pub\n").endswith("daemon.yaml: state_dir: required")
    without_address = MINIMAL.replace("  address: fleet.example.org:9092\n", "")
    assert _error(tmp_path, without_address).endswith("server.address: required")
    assert _error(tmp_path, "").endswith("state_dir: required")


@pytest.mark.parametrize("address", ["fleet.example.org", ":9092", "host:port", "host:70000"])
def test_server_address_must_be_host_and_port(tmp_path: Path, address: str) -> None:
    text = MINIMAL.replace("fleet.example.org:9092", f"'{address}'")
    assert 'server.address: expected "host:port"' in _error(tmp_path, text)


def test_ipv6_address_is_accepted(tmp_path: Path) -> None:
    text = MINIMAL.replace("fleet.example.org:9092", "'[::1]:9092'")
    assert load_config(_write(tmp_path, text)).server.address == "[::1]:9092"


def test_tls_certificates_are_required_unless_explicitly_insecure(tmp_path: Path) -> None:
    no_tls = MINIMAL.replace("  root_certificates: certs/ca.pem\n", "")
    assert "server.root_certificates: required unless server.insecure" in _error(tmp_path, no_tls)

    config = load_config(_write(tmp_path, no_tls + "  insecure: true\n"))
    assert config.server.insecure is True
    assert "server.insecure: true conflicts" in _error(tmp_path, MINIMAL + "  insecure: true\n")


def test_missing_file_and_invalid_yaml_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: no such file"):
        load_config(tmp_path / "nowhere.yaml")

    message = _error(tmp_path, "state_dir: [unclosed\n")
    assert "daemon.yaml: invalid YAML at line 2" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "daemon.yaml: must be a mapping of keys, got ['a']" in _error(tmp_path, "- a\n")


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    # A Python object tag must be refused, not constructed.
    text = "state_dir: !!python/object/apply:os.getcwd []\n"
    assert "invalid YAML" in _error(tmp_path, text)


def test_a_key_given_twice_is_an_error_naming_the_key_and_both_lines(tmp_path: Path) -> None:
    nested = MINIMAL + "  address: other.example.org:9092\n"  # line 6; the first is line 4
    top = MINIMAL + "state_dir: elsewhere\n"
    listed = MINIMAL + "eligibility:\n  time_windows: [{a: 1, a: 2}]\n"

    assert _error(tmp_path, nested) == (
        f"{tmp_path / 'daemon.yaml'}: server.address: duplicate key at line 6 (first at line 4)"
    )
    assert _error(tmp_path, top).endswith("state_dir: duplicate key at line 6 (first at line 1)")
    assert "eligibility.time_windows[0].a: duplicate key at line 7" in _error(tmp_path, listed)


def test_anchors_and_aliases_still_load(tmp_path: Path) -> None:
    text = MINIMAL + "eligibility:\n  time_windows: &night ['22:00-06:00']\n"

    assert len(load_config(_write(tmp_path, text)).eligibility.time_windows) == 1


def _key_files(tmp_path: Path) -> Path:
    for name in ("keys/fleet.pub", "certs/ca.pem", "node.key"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    return _write(tmp_path, MINIMAL + "  auth_key: node.key\n")


def test_check_files_passes_when_every_key_file_is_readable(tmp_path: Path) -> None:
    config = load_config(_key_files(tmp_path), check_files=True)

    assert config.server.auth_key == tmp_path / "node.key"


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("fleet_key", "keys/fleet.pub"),
        ("server.root_certificates", "certs/ca.pem"),
        ("server.auth_key", "node.key"),
    ],
)
def test_check_files_names_the_key_of_a_missing_or_unreadable_file(
    tmp_path: Path, key: str, name: str
) -> None:
    path = _key_files(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(ConfigError) as missing:
        load_config(path, check_files=True)
    (tmp_path / name).mkdir()
    with pytest.raises(ConfigError) as directory:
        load_config(path, check_files=True)

    assert str(missing.value) == f"{path}: {key}: {tmp_path / name}: no such file"
    assert str(directory.value).endswith(f"{key}: {tmp_path / name}: is a directory, not a file")
    load_config(path)  # without check_files (status, ingest) the files are not needed


def test_check_files_reports_a_file_the_daemon_may_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _key_files(tmp_path)
    real_open = Path.open

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        # chmod 0 cannot deny root (tests may run as root): refuse the read as the kernel would.
        if self.name == "node.key":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ConfigError, match=r"server\.auth_key: .*node\.key: not readable"):
        load_config(path, check_files=True)
