"""bench/fleet_find.py keeps each finished seed, so a long task is measured a seed per session."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def fleet_find() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_fleet_find_seeds", BENCH / "fleet_find.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
