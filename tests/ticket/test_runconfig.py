"""ticket/runconfig.py: every run key typed once; parse and unparse round-trip, a bad value
names its key, and pyproject.toml's table is the rendered one."""

import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from ticket import runconfig
from ticket.runconfig import (
    RolloutSettings,
    RunConfig,
    RunConfigError,
    RunPlacement,
    SearchSettings,
    SimulationSettings,
    TrainingSettings,
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _settings() -> list[tuple[str, Any, dict[str, Any]]]:
    """(key, type, rules) of every setting."""
    return [
        (runconfig.key_of(spec.name), hint, dict(spec.metadata))
        for _, group in runconfig.groups()
        for spec, hint in runconfig.settings_of(group)
    ]


def test_the_defaults_round_trip() -> None:
    flat = runconfig.to_run_config(RunConfig())

    assert list(flat) == runconfig.keys()
    assert runconfig.parse(flat) == RunConfig()
    assert runconfig.parse({}) == RunConfig()  # every key has its one default


def test_set_values_round_trip_through_the_flat_config() -> None:
    config = RunConfig(
        placement=RunPlacement(
            mode="deploy", ticket_path=Path("/t.ticket"), run_dir=Path("/run"), fleet_key=None
        ),
        training=TrainingSettings(
            num_rounds=7, lr=0.05, secagg=True, dp_noise_multiplier=1.1, server_eval="heart-uci"
        ),
        rollout=RolloutSettings(canary_fraction=0.5, baseline_ticket_path=Path("/old.ticket")),
        simulation=SimulationSettings(sim_dataset="mnist", sim_partition="shards"),
    )

    flat = runconfig.to_run_config(config)

    assert flat["ticket-path"] == "/t.ticket" and flat["fleet-key"] == ""  # None travels as ""
    assert flat["dp-noise-multiplier"] == 1.1 and flat["sim-dataset"] == "mnist"
    assert runconfig.parse(flat) == config


def test_keys_are_the_field_names_with_hyphens_and_each_is_defined_once() -> None:
    keys = runconfig.keys()

    assert len(keys) == len(set(keys))
    assert "dp-noise-multiplier" in keys and "sim-partition-alpha" in keys
    for key, _, rules in _settings():
        assert "_" not in key and rules["help"], key


def test_an_int_is_accepted_for_a_float_and_kept_as_a_float() -> None:
    parsed = runconfig.parse({"round-timeout-s": 30})

    assert parsed.training.round_timeout_s == 30.0
    assert isinstance(parsed.training.round_timeout_s, float)


def _bad_values(hint: Any, rules: dict[str, Any]) -> list[object]:
    """Values the setting must refuse: wrong types (bool is not int), then out of range."""
    kind = next(option for option in (*typing.get_args(hint), hint) if option is not type(None))
    bad: list[object] = {
        bool: [1, "true"],
        int: [True, 1.5, "3"],
        float: [True, "0.5", float("nan")],
        str: [1, True],
        Path: [1, False],
    }[kind]
    if "ge" in rules:
        bad.append(rules["ge"] - 1)
    if "gt" in rules:
        bad.append(rules["gt"])
    if "le" in rules:
        bad.append(rules["le"] + 1)
    if "choices" in rules:
        bad.append("no-such-choice")
    return bad


@pytest.mark.parametrize(("key", "hint", "rules"), _settings(), ids=lambda v: str(v)[:30])
def test_every_bad_value_is_an_error_naming_its_key(
    key: str, hint: Any, rules: dict[str, Any]
) -> None:
    for value in _bad_values(hint, rules):
        with pytest.raises(RunConfigError) as caught:
            runconfig.parse({key: value})
        assert str(caught.value).startswith(f"run config: {key}: must be "), value


def test_a_bad_value_says_what_was_expected() -> None:
    with pytest.raises(RunConfigError) as caught:
        runconfig.parse({"dp-noise-multiplier": -0.5})
    assert str(caught.value) == ("run config: dp-noise-multiplier: must be a number >= 0, got -0.5")
    with pytest.raises(RunConfigError, match=r"min-installed: must be a number in \(0, 1\]"):
        runconfig.parse({"min-installed": 0})


def test_an_unknown_key_is_an_error_naming_it() -> None:
    with pytest.raises(RunConfigError, match="run config: num-round: unknown key"):
        runconfig.parse({"num-round": 3})


def test_a_missing_required_path_names_its_key() -> None:
    with pytest.raises(RunConfigError, match="run config: ticket-path is required"):
        runconfig.require(RunConfig().placement, "ticket_path")


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(RunConfigError, match="run config: num-rounds: must be a whole number"):
        TrainingSettings(num_rounds=0)


def test_the_search_schedule_keys_replace_only_the_training_keys_they_set() -> None:
    training = TrainingSettings(local_epochs=4, batch_size=32, lr=0.001, optimizer="adam")
    assert SearchSettings().schedule(training) == training
    changed = SearchSettings(search_batch_size=4096, search_optimizer="sgd").schedule(training)
    assert (changed.local_epochs, changed.batch_size, changed.lr, changed.optimizer) == (
        4,
        4096,
        0.001,
        "sgd",
    )
    assert changed.min_nodes == training.min_nodes  # nothing but the schedule changes
    # SEARCH_SCHEDULE_FIELDS (what a search's resume fingerprint sets aside) are the ones it reads
    setting = {"search_local_epochs": 2, "search_batch_size": 8, "search_lr": 0.5,
               "search_optimizer": "sgd"}  # fmt: skip
    assert set(runconfig.SEARCH_SCHEDULE_FIELDS) == set(setting)
    for name, value in setting.items():
        assert SearchSettings(**{name: value}).schedule(training) != training, name


def test_the_rendered_table_holds_every_default() -> None:
    table = tomllib.loads(runconfig.render_table())

    assert table["tool"]["flwr"]["app"]["config"] == runconfig.to_run_config(RunConfig())


def test_pyproject_holds_the_rendered_table() -> None:
    text = PYPROJECT.read_text()

    assert runconfig.replace_table(text) == text, (
        "pyproject.toml's [tool.flwr.app.config] is not ticket/runconfig.py's; regenerate it: "
        "`.venv/bin/python -m ticket.runconfig pyproject.toml`"
    )


def test_pyproject_names_the_components_the_generated_app_names() -> None:
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]

    assert app["publisher"] == runconfig.PUBLISHER
    assert app["components"] == {
        "serverapp": runconfig.SERVER_APP,
        "clientapp": runconfig.CLIENT_APP,
    }


def test_the_generated_app_is_a_valid_flower_app(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk
    from flwr.common.config import validate_config

    app = runconfig.write_app(tmp_path / "app", name="ticketfleet", version="1.2.3")
    config = tomllib.loads((app / "pyproject.toml").read_text())

    assert validate_config(config, check_module=False)[0]
    assert config["project"] == {"name": "ticketfleet", "version": "1.2.3"}
    assert config["tool"]["flwr"]["app"]["config"] == runconfig.to_run_config(RunConfig())
    assert build_fab_from_disk(app)  # what `flwr run` does first


def test_replace_table_rewrites_only_the_table() -> None:
    text = "[a]\nx = 1\n\n[tool.flwr.app.config]\nold = 1  # gone\n\n[b]\ny = 2\n"

    replaced = runconfig.replace_table(text)

    assert replaced == f"[a]\nx = 1\n\n{runconfig.render_table()}\n[b]\ny = 2\n"


def test_a_population_too_small_for_the_run_is_refused_before_any_round() -> None:
    from ticket.runconfig import TrainingSettings

    TrainingSettings(min_nodes=10).check_population(10, "the federation's num-supernodes")
    with pytest.raises(RunConfigError, match="min-nodes = 11 needs at least 11 devices; the fed"):
        TrainingSettings(min_nodes=11).check_population(10, "the federation's num-supernodes")
    with pytest.raises(RunConfigError, match="round-goal = 20 needs at least 20 devices"):
        TrainingSettings(round_goal=20).check_population(10, "nodes.json")
    with pytest.raises(RunConfigError, match="min-replies = 12 needs at least 12"):
        TrainingSettings(min_replies=12).check_population(10, "nodes.json")
    sampled = TrainingSettings(
        secagg=True, dp_noise_multiplier=1.0, dp_sampling_rate=0.01, min_replies=5
    )
    with pytest.raises(RunConfigError, match=r"samples 1\.0 a round on average, below min-repl"):
        sampled.check_population(100, "nodes.json")
    sampled.check_population(1000, "nodes.json")
