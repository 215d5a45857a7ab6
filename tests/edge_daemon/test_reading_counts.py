"""What a device counts for a federated fit of the encoding (edge_daemon/reading_counts.py)."""

import time
from pathlib import Path

import numpy as np
import pytest

from edge_daemon.local_data import LocalDataError, LocalDataSpec, StoreSpec
from edge_daemon.reading_counts import local_counts
from edge_daemon.readings import ReadingsStore
from tests.edge_daemon.test_readings import HEADER, ROWS
from ticket.data.heart import heart_training_rows, load_heart
from ticket.data.heart_counts import encoding_counts


def _store(tmp_path: Path, rows: list[str]) -> StoreSpec:
    db, csv = tmp_path / "readings.sqlite3", tmp_path / "r.csv"
    csv.write_text("\n".join([HEADER, *rows]) + "\n")
    with ReadingsStore(db) as store:
        store.ingest_csv(csv, now=time.time())
    return StoreSpec.from_node_config({"readings-db": str(db)})


def test_a_device_counts_the_readings_it_trains_on_not_those_it_holds_out(
    tmp_path: Path,
) -> None:
    rows = ROWS * 3  # enough for a held-out reading (every 5th)
    spec = _store(tmp_path, rows)
    with ReadingsStore(spec.path) as store:
        stored = store.rows()
    trained = [row for index, row in enumerate(stored) if index % spec.test_every != 4]

    counts = local_counts(spec, "heart-uci")

    assert len(trained) < len(stored)
    np.testing.assert_array_equal(counts, encoding_counts(trained))


def test_the_four_hospitals_partitions_count_what_the_pooled_encoder_is_fitted_on() -> None:
    nodes = [LocalDataSpec("heart-uci", index, 4, "natural") for index in range(4)]
    summed = sum(local_counts(node, "heart-uci") for node in nodes)

    # test_heart_counts.py holds the pooled rows' counts to fit as the pooled rows do.
    np.testing.assert_array_equal(summed, encoding_counts(heart_training_rows()))
    assert len(heart_training_rows()) == load_heart().x_train.shape[0]


def test_counts_of_another_schema_or_from_no_readings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalDataError, match="no encoding fit for readings schema 'mnist'"):
        local_counts(LocalDataSpec("heart-uci", 0, 4), "mnist")
    with pytest.raises(LocalDataError, match="counts of 'heart-uci' asked, this node holds"):
        local_counts(LocalDataSpec("mnist", 0, 4), "heart-uci")
    empty = StoreSpec.from_node_config({"readings-db": str(tmp_path / "none.sqlite3")})
    with pytest.raises(LocalDataError, match="no readings on this device yet"):
        local_counts(empty, "heart-uci")
