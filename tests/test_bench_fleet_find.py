"""bench/fleet_find.py keeps each finished seed, so a long task is measured a seed per session."""

import argparse
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench_scripts import BENCH, load_bench_script


@pytest.fixture(scope="module")
def fleet_find() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    return load_bench_script(BENCH / "fleet_find.py", "bench_fleet_find_seeds")


def test_a_kept_seed_is_reused_only_under_the_same_settings(
    fleet_find: ModuleType, tmp_path: Path
) -> None:
    settings = {"task": "fed-mnist", "densities": [0.2, 0.1], "methods": ["fed-imp"]}
    rows = [{"arm": "fed-imp", "target": 0.2, "seed": 1, "accuracy": 0.9}]
    kept = fleet_find.SeedStore(tmp_path / "seeds", settings)

    assert kept.load(1) is None  # nothing kept yet
    kept.save(1, rows)

    assert kept.load(1) == rows
    assert kept.load(0) is None
    other = fleet_find.SeedStore(tmp_path / "seeds", {**settings, "densities": [0.2]})
    assert other.load(1) is None  # other densities: run again, never mixed into the table


def test_a_rounds_per_level_variant_is_refused_below_one_and_names_its_results(
    fleet_find: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        fleet_find.main(["--rounds-per-level", "0"])
    assert "--rounds-per-level must be >= 1" in capsys.readouterr().err
    settings = {"search-rounds-per-level": 10, "search-rate": 0.5}
    assert fleet_find._keys(settings) == ("`search-rate = 0.5`, `search-rounds-per-level = 10`")


def _variant_args(**changes: object) -> argparse.Namespace:
    defaults = {"task": "fed-heart", "rounds_per_level": None, "search_key": [],
                "partition": None, "variant": None}  # fmt: skip
    return argparse.Namespace(**(defaults | changes))


def test_a_variant_changes_the_search_keys_and_names_its_results(fleet_find: ModuleType) -> None:
    parser = argparse.ArgumentParser()
    task, suffix = fleet_find._variant(
        parser, _variant_args(rounds_per_level=20, search_key=["optimizer=sgd", "lr=1.0"])
    )
    assert suffix == "_rpl20_optimizersgd_lr1.0"
    assert (task.search["optimizer"], task.search["lr"]) == ("sgd", 1.0)
    assert task.search["search-rounds-per-level"] == 20
    assert task.search["search-rate"] == fleet_find.TASKS["fed-heart"].search["search-rate"]
    _, named = fleet_find._variant(parser, _variant_args(search_key=["lr=1"], variant="fedsgd"))
    assert named == "_fedsgd"
    assert fleet_find._variant(parser, _variant_args()) == (fleet_find.TASKS["fed-heart"], "")
    with pytest.raises(SystemExit):
        fleet_find._variant(parser, _variant_args(search_key=["lr"]))


def test_the_iid_variant_splits_the_same_rows_among_the_same_devices(
    fleet_find: ModuleType,
) -> None:
    parser = argparse.ArgumentParser()
    task, suffix = fleet_find._variant(parser, _variant_args(task="fed-mnist", partition="iid"))
    own = fleet_find.TASKS["fed-mnist"].nodes(Path("t.ticket"))
    nodes = task.nodes(Path("t.ticket"))
    assert suffix == "_iid" and len(nodes) == len(own) == 100
    assert {node["partition"] for node in nodes} == {"iid"}
    assert all("partition-shards" not in node for node in nodes)  # iid takes no shards
    assert task.simulation["sim-partition"] == "iid"
    assert "sim-partition-shards" not in task.simulation
