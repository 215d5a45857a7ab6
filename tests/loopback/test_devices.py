"""Loopback devices: a hospital's readings, whole or shared among several devices."""

import csv
from pathlib import Path

from loopback.devices import hospital_csv


def _ids(path: Path) -> list[str]:
    with path.open() as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def test_shards_split_a_hospitals_training_rows_among_its_devices(tmp_path: Path) -> None:
    whole = _ids(hospital_csv("Hungary", tmp_path / "all.csv"))
    parts = [_ids(hospital_csv("Hungary", tmp_path / f"{i}.csv", shard=(i, 2))) for i in (0, 1)]

    assert sorted(parts[0] + parts[1]) == sorted(whole)  # every row, once
    assert not set(parts[0]) & set(parts[1])
    assert abs(len(parts[0]) - len(parts[1])) <= 1
