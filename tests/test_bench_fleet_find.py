"""bench/fleet_find.py keeps each finished seed, so a long task is measured a seed per session."""

import json
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


def test_a_ticket_is_scored_on_its_last_round_and_on_its_last_rounds_mean(
    fleet_find: ModuleType, tmp_path: Path
) -> None:
    task = fleet_find.TASKS["fed-mnist"]
    accuracies = [0.1] * (task.train_rounds - 5) + [0.70, 0.80, 0.60, 0.75, 0.65]
    with (tmp_path / "rounds.jsonl").open("w") as log:
        for number, accuracy in enumerate(accuracies, start=1):
            line = {
                "round": number,
                "bytes": {"up_total": 10},
                "server_eval": {"accuracy": accuracy},
            }
            log.write(json.dumps(line) + "\n")

    scored = fleet_find.scores(task, tmp_path)

    assert scored["accuracy"] == 0.65  # the last round's
    assert scored["accuracy_last"] == pytest.approx(0.70)  # the mean of the last five
    assert scored["train_bytes_up"] == 10 * task.train_rounds and scored["bytes_to_target"] is None


def test_the_table_says_in_how_many_seeds_the_last_rounds_mean_was_recorded(
    fleet_find: ModuleType, tmp_path: Path
) -> None:
    rows = [  # seed 0 kept from before the mean was recorded
        {"arm": "fed-imp", "target": 0.2, "density": 0.2, "seed": 0, "accuracy": 0.7},
        {"arm": "fed-imp", "target": 0.2, "density": 0.2, "seed": 1, "accuracy": 0.8,
         "accuracy_last": 0.75},
    ]  # fmt: skip
    document = {"task": "fed-mnist", "command": "c", "finished_at": "t", "machine": "m",
                "seeds": 2, "secagg": True, "train_rounds": 30, "target_accuracy": 0.85,
                "table": fleet_find.summarise(rows)}  # fmt: skip

    fleet_find.write_markdown(document, tmp_path / "t.md")

    row = next(line for line in (tmp_path / "t.md").read_text().splitlines() if "fed-imp" in line)
    assert "| 0.750 ± 0.050 | 0.750 (1/2) |" in row  # accuracy over both, the mean over one
