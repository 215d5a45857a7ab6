"""bench/fleet_tasks.py: the variants of a fleet-search bench task its options make, each
refused by name when it would change what the bench sets per row, and named in its results."""

import argparse
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench_scripts import BENCH, load_bench_script


@pytest.fixture(scope="module")
def fleet_tasks() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    return load_bench_script(BENCH / "fleet_tasks.py", "bench_fleet_tasks_variants")


def _variant_args(**changes: object) -> argparse.Namespace:
    defaults = {"task": "fed-heart", "rounds_per_level": None, "search_key": [],
                "partition": None, "variant": None}  # fmt: skip
    return argparse.Namespace(**(defaults | changes))


def test_a_variant_changes_the_search_keys_and_names_its_results(fleet_tasks: ModuleType) -> None:
    parser = argparse.ArgumentParser()
    task, suffix = fleet_tasks.variant_of(
        parser, _variant_args(rounds_per_level=20, search_key=["optimizer=sgd", "lr=1.0"])
    )
    assert suffix == "_rpl20_optimizersgd_lr1.0"
    assert (task.search["optimizer"], task.search["lr"]) == ("sgd", 1.0)
    assert task.search["search-rounds-per-level"] == 20
    assert task.search["search-rate"] == fleet_tasks.TASKS["fed-heart"].search["search-rate"]
    _, named = fleet_tasks.variant_of(parser, _variant_args(search_key=["lr=1"], variant="fedsgd"))
    assert named == "_fedsgd"
    assert fleet_tasks.variant_of(parser, _variant_args()) == (fleet_tasks.TASKS["fed-heart"], "")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("lr", "expected KEY=VALUE, got 'lr'"),
        ("no-such-key=1", "no-such-key is not a run-config key"),
        ("search-method=fed-snip", "search-method is set by the bench for each row"),
        ("lr=../x", "lr's value may hold letters, digits"),
    ],
)
def test_a_bad_search_key_is_refused_by_name(
    fleet_tasks: ModuleType, capsys: pytest.CaptureFixture[str], bad: str, message: str
) -> None:
    with pytest.raises(SystemExit):
        fleet_tasks.variant_of(argparse.ArgumentParser(), _variant_args(search_key=[bad]))
    assert message in capsys.readouterr().err


def test_the_iid_variant_splits_the_same_rows_among_the_same_devices(
    fleet_tasks: ModuleType,
) -> None:
    parser = argparse.ArgumentParser()
    task, suffix = fleet_tasks.variant_of(parser, _variant_args(task="fed-mnist", partition="iid"))
    own = fleet_tasks.TASKS["fed-mnist"].nodes(Path("t.ticket"))
    nodes = task.nodes(Path("t.ticket"))
    assert suffix == "_iid" and len(nodes) == len(own) == 100
    assert {node["partition"] for node in nodes} == {"iid"}
    assert all("partition-shards" not in node for node in nodes)  # iid takes no shards
    assert task.simulation["sim-partition"] == "iid"
    assert "sim-partition-shards" not in task.simulation


def test_main_prints_what_a_variant_runs_and_where_its_results_go(
    fleet_tasks: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_tasks.main(["--rounds-per-level", "20", "--search-key", "optimizer=sgd"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "results   bench/results/fleet_find_fed-heart_rpl20_optimizersgd.md"
    assert out[1].startswith("devices   4, min-nodes = 4")
    assert "optimizer = sgd" in out[3] and "search-rounds-per-level = 20" in out[3]
