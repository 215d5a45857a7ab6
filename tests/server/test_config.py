"""server.yaml: the example loads and documents every key; errors name the file and the key."""

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import OPTIMIZERS, ConfigError, FleetConfig, RunSection, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "server.yaml"


def _schema_keys(schema: Any, prefix: str = "") -> set[str]:
    keys = set()
    for spec, hint in zip(
        dataclasses.fields(schema), typing.get_type_hints(schema).values(), strict=True
    ):
        keys.add(prefix + spec.name)
        if dataclasses.is_dataclass(hint):
            keys |= _schema_keys(hint, f"{prefix}{spec.name}.")
    return keys


def _file_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in data.items():
        keys.add(prefix + name)
        if isinstance(value, dict):
            keys |= _file_keys(value, f"{prefix}{name}.")
    return keys


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


def test_the_example_loads_with_defaults_under_the_state_dir() -> None:
    config = load_config(EXAMPLE)

    assert config.state_dir == Path("/var/lib/fleet-server")
    assert config.run.ticket == EXAMPLE.parent / "heart.ticket"  # relative to the file
    assert config.tls_files.ca_cert == Path("/var/lib/fleet-server/pki/ca.crt")
    assert config.fleet_public_key == Path("/var/lib/fleet-server/keys/fleet.pub")
    assert config.node_auth and config.is_dev_pki
    assert config.connect_address == "127.0.0.1:9092"  # 0.0.0.0 is no address to connect to


def test_the_example_shows_every_key_of_the_schema() -> None:
    assert _file_keys(yaml.safe_load(EXAMPLE.read_text())) == _schema_keys(FleetConfig)


def test_run_config_maps_onto_the_server_apps_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "state_dir: s\nrun:\n  ticket: t.ticket\n  num_rounds: 5\n  lr: 0.01\n")

    config = load_config(path)
    assert config.run.ticket is not None
    run = config.run_config(config.run.ticket, config.run_dir())

    assert run["run-dir"] == str(tmp_path / "s" / "runs" / "main")
    assert run["ticket-path"] == str(tmp_path / "t.ticket")
    assert run["fleet-key"] == str(tmp_path / "s" / "keys" / "fleet.pub")
    assert (run["num-rounds"], run["lr"], run["server-eval"]) == (5, 0.01, "")
    assert run["allow-unsigned"] is False


def test_run_config_keys_exist_in_the_apps_defaults() -> None:
    # Every key we pass must be one the ServerApp knows (pyproject's [tool.flwr.app.config]).
    import tomllib

    pyproject = tomllib.loads((EXAMPLE.parents[2] / "pyproject.toml").read_text())
    known = set(pyproject["tool"]["flwr"]["app"]["config"])
    config = load_config(EXAMPLE)
    assert set(config.run_config(Path("t.ticket"), config.run_dir("ab" * 32))) <= known


def test_the_run_section_is_the_run_configs_training_settings_plus_where_and_how_long() -> None:
    # One set of names, types, ranges and defaults: ticket/runconfig.py's.
    from ticket.runconfig import TrainingSettings

    training = [spec.name for spec in dataclasses.fields(TrainingSettings)]
    assert [spec.name for spec in dataclasses.fields(RunSection)] == [
        *training,
        "ticket",
        "name",
        "when_done",
    ]
    assert load_config(EXAMPLE).run.training == TrainingSettings()  # the example shows defaults


def test_optimizers_match_the_training_loop() -> None:
    from ticket.train_config import OPTIMIZERS as TRAIN_OPTIMIZERS

    assert OPTIMIZERS == TRAIN_OPTIMIZERS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state_dir: s\nrun: {ticket: t}\nlisten: {prot: 1}\n", "listen.prot: unknown key"),
        (
            "state_dir: s\nrun: {ticket: t, num_rounds: 0}\n",
            "run.num_rounds: must be a whole number >= 1",
        ),
        ("state_dir: s\nrun: {ticket: t, rounds: 3}\n", "run.rounds: renamed: use run.num_rounds"),
        (
            "state_dir: s\nrun: {ticket: t, dp_delta: 0.9}\n",
            r"run.dp_delta: must be a number in \(0, 0.5\]",
        ),
        ("state_dir: s\nrun: {ticket: t, optimizer: lion}\n", "run.optimizer: must be one of"),
        ("state_dir: s\nrun: {ticket: t, server_eval: nope}\n", "run.server_eval: must be one of"),
        ("state_dir: s\nrun: {ticket: t}\nnode_auth: yes please\n", "node_auth: must be true"),
        ("state_dir: s\n", "run: required"),
        ("run: {ticket: t}\n", "state_dir: required"),
        ("state_dir: s\nrun: {ticket: t}\ntls: {ca_cert: ca.pem}\n", "tls: give all of"),
        ("state_dir: s\nrun: {ticket: t}\nlisten: {port: 70000}\n", "listen.port: must be"),
        ("state_dir: [s\n", "invalid YAML at line"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_a_key_given_twice_is_an_error_naming_the_file_key_and_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "state_dir: s\nrun:\n  num_rounds: 3\n  num_rounds: 30\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: run.num_rounds: duplicate key at line 4 (first at line 3)"


def test_keys_that_conflict_with_each_other_are_named_as_server_yaml_spells_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("state_dir: s\nrun:\n  round_goal: 2\n  round_deadline_s: 700\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{path}: run: run.round_deadline_s (700) must be <= run.round_timeout_s (600) "
        "when run.round_goal > 0"
    )


def test_a_path_under_the_home_of_a_user_this_machine_lacks_is_a_named_error(
    tmp_path: Path,
) -> None:
    # Found by bench/hardening_inputs.py: one flipped bit made a path "~..." and expanduser's
    # RuntimeError escaped as a traceback.
    path = _write(tmp_path, "state_dir: ~no-such-user-ticketfleet/state\nrun: {num_rounds: 1}\n")

    with pytest.raises(ConfigError, match=r"state_dir: names no home directory here") as raised:
        load_config(path)
    assert str(path) in str(raised.value)
