"""bench/fleet_find.py keeps each finished seed, so a long task is measured a seed per session."""

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
