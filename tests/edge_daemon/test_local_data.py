"""The device's readings as training data: retention applies before the ClientApp reads them."""

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_daemon import local_data
from edge_daemon.local_data import (
    LocalDataError,
    LocalDataSpec,
    StoreSpec,
    load_local_data,
    load_store_data,
)
from edge_daemon.readings import ReadingsStore
from tests.edge_daemon.test_readings import HEADER, ROWS
from ticket.data.heart_encoding import HeartPreprocessor

DAY_S = 86_400.0


def _ingest(store: ReadingsStore, path: Path, rows: list[str], *, at: float) -> None:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    store.ingest_csv(path, now=at)


def test_a_reading_past_retention_days_is_purged_and_never_trained_on(tmp_path: Path) -> None:
    db = tmp_path / "readings.sqlite3"
    with ReadingsStore(db) as store:  # no limits here: as if the daemon's purge had not run
        _ingest(store, tmp_path / "old.csv", ROWS[2:], at=time.time() - 10 * DAY_S)
        _ingest(store, tmp_path / "new.csv", ROWS[:2], at=time.time())
        kept = store.rows()[1:]
    preprocessing = HeartPreprocessor.fit(kept).to_json()
    spec = StoreSpec.from_node_config({"readings-db": str(db), "retention-days": 1.0})

    data = load_store_data(spec, preprocessing)

    assert data.x_train.shape[0] + data.x_test.shape[0] == 2  # the old row is not among them
    expected = HeartPreprocessor.from_json(preprocessing).transform(kept)
    assert data.x_train.tolist() == expected.tolist()
    with ReadingsStore(db) as store:
        assert store.rows() == kept  # and it is gone from the store


def test_retention_rows_keeps_only_the_newest(tmp_path: Path) -> None:
    db = tmp_path / "readings.sqlite3"
    with ReadingsStore(db) as store:
        _ingest(store, tmp_path / "r.csv", ROWS, at=time.time())
        rows = store.rows()
    spec = StoreSpec.from_node_config({"readings-db": str(db), "retention-rows": 2})

    data = load_store_data(spec, HeartPreprocessor.fit(rows).to_json())

    assert data.x_train.shape[0] == 2
    with ReadingsStore(db) as store:
        assert store.rows() == rows[1:]


def test_the_retention_keys_of_the_node_config_are_typed() -> None:
    spec = StoreSpec.from_node_config(
        {"readings-db": "/r.sqlite3", "retention-rows": 10, "retention-days": 7}
    )
    assert (spec.retention_rows, spec.retention_days) == (10, 7.0)
    assert StoreSpec.from_node_config({"readings-db": "/r"}).retention_days is None
    for bad in ({"retention-rows": 0}, {"retention-days": -1.0}, {"retention-rows": "many"}):
        with pytest.raises(LocalDataError):
            StoreSpec.from_node_config({"readings-db": "/r", **bad})


def test_unlabelled_readings_are_never_trained_or_evaluated_on(tmp_path: Path) -> None:
    db = tmp_path / "readings.sqlite3"
    unlabelled = [row.rsplit(",", 1)[0] + "," for row in ROWS]  # label cells emptied
    with ReadingsStore(db) as store:
        _ingest(store, tmp_path / "r.csv", [*ROWS, *unlabelled, *unlabelled], at=time.time())
        labelled = store.rows()
    spec = StoreSpec(db, test_every=2)

    data = load_store_data(spec, HeartPreprocessor.fit(labelled).to_json())

    assert data.y_train.shape[0] + data.y_test.shape[0] == len(ROWS)
    expected = HeartPreprocessor.fit(labelled).transform(labelled)
    assert data.x_train.tolist() == expected[[0, 2]].tolist()


def test_a_fleets_split_is_made_once_per_process_for_all_its_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Simulation Engine worker serves many virtual nodes: the split is made once for them
    all (train and test), and each node still gets exactly its own rows."""
    fresh = {}
    for partition_id in range(4):
        local_data._fleet_split.cache_clear()
        fresh[partition_id] = load_local_data(_heart(partition_id))
    made: list[LocalDataSpec] = []
    split = local_data._split

    def counted(spec: LocalDataSpec, labels: Any, sites: Any) -> Any:
        made.append(spec)
        return split(spec, labels, sites)

    monkeypatch.setattr(local_data, "_split", counted)
    local_data._fleet_split.cache_clear()
    cached = {partition_id: load_local_data(_heart(partition_id)) for partition_id in range(4)}

    assert len(made) == 2  # the train rows' split and the test rows', for all 4 nodes
    for partition_id, data in cached.items():
        np.testing.assert_array_equal(data.x_train, fresh[partition_id].x_train)
        np.testing.assert_array_equal(data.y_test, fresh[partition_id].y_test)
    assert len({data.x_train.shape[0] for data in cached.values()}) > 1  # not one node's rows
    # Another split (seed) of the same dataset is a split of its own.
    other = load_local_data(replace(_heart(0), seed=5))
    assert len(made) == 4
    assert not np.array_equal(other.y_train, cached[0].y_train)


def _heart(partition_id: int) -> LocalDataSpec:
    return LocalDataSpec("heart-uci", partition_id, 4, "iid", seed=3)
