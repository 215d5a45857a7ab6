"""The device's readings as training data: retention applies before the ClientApp reads them."""

import time
from pathlib import Path

import pytest

from edge_daemon.local_data import LocalDataError, StoreSpec, load_store_data
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
