"""The readings store: validated all-or-nothing CSV ingest, retention, and private errors."""

import sqlite3
import stat
from pathlib import Path

import pytest

from edge_daemon.readings import CsvLimits, IngestError, ReadingsStore, StoreError
from ticket.data.heart_encoding import HeartPreprocessor
from ticket.errors import UnknownNameError

HEADER = "id,age,sex,dataset,cp,trestbps,chol,fbs,restecg,thalch,exang,oldpeak,slope,ca,thal,num"
ROWS = [
    "1,63,Male,Cleveland,typical angina,145,233,TRUE,lv hypertrophy,150,FALSE,2.3,downsloping,0,"
    "fixed defect,0",
    "2,67,Male,Cleveland,asymptomatic,160,286,FALSE,lv hypertrophy,108,TRUE,1.5,flat,3,normal,2",
    "3,37,Female,Hungary,non-anginal,130,0,FALSE,normal,187,FALSE,3.5,,,,1",
]  # fmt: skip
DAY_S = 86_400.0


def _csv(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "readings.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def store(tmp_path: Path) -> ReadingsStore:
    return ReadingsStore(tmp_path / "readings.sqlite3")


def _reject(store: ReadingsStore, path: Path, limits: CsvLimits | None = None) -> IngestError:
    with pytest.raises(IngestError) as caught:
        store.ingest_csv(path, now=0.0, limits=limits or CsvLimits())
    assert store.count() == 0 and store.ingests() == []  # nothing of the file was written
    return caught.value


def test_good_file_is_ingested_with_parsed_values(store: ReadingsStore, tmp_path: Path) -> None:
    result = store.ingest_csv(_csv(tmp_path, *ROWS), now=1000.0)

    assert (result.rows_added, result.rows_expired, result.is_duplicate) == (3, 0, False)
    assert store.count() == 3
    rows = store.rows()
    assert rows[0]["age"] == 63.0 and rows[0]["cp"] == "typical angina" and rows[0]["num"] == 0.0
    assert rows[2]["chol"] is None  # 0 is the "not measured" code
    assert rows[2]["slope"] is None  # an empty cell is not recorded
    assert "id" not in rows[0] and "dataset" not in rows[0]  # extra columns are not kept
    assert [(r.rows, r.ingested_at) for r in store.ingests()] == [(3, 1000.0)]
    assert store.ingests()[0].content_sha256 == result.content_sha256


def test_stored_rows_feed_the_heart_preprocessor(store: ReadingsStore, tmp_path: Path) -> None:
    store.ingest_csv(_csv(tmp_path, *ROWS), now=0.0)

    rows = store.rows()
    features = HeartPreprocessor.fit(rows).transform(rows)
    labels = HeartPreprocessor.fit(rows).labels(rows)

    assert features.shape[0] == 3
    assert labels.tolist() == [0, 1, 1]


def test_the_same_file_twice_is_not_counted_twice(store: ReadingsStore, tmp_path: Path) -> None:
    path = _csv(tmp_path, *ROWS)
    store.ingest_csv(path, now=5.0)

    again = store.ingest_csv(path, now=9.0)

    assert again.is_duplicate and again.rows_added == 0 and again.ingested_at == 5.0
    assert store.count() == 3


def test_missing_header_columns_are_listed(store: ReadingsStore, tmp_path: Path) -> None:
    header = HEADER.replace(",chol", "").replace(",num", "")
    rows = [row.replace(",233", "").removesuffix(",0") for row in ROWS[:1]]

    error = _reject(store, _csv(tmp_path, *rows, header=header))

    assert str(error) == "readings.csv: line 1: header lacks column(s): chol, num"


def test_a_duplicated_header_column_is_rejected(store: ReadingsStore, tmp_path: Path) -> None:
    error = _reject(store, _csv(tmp_path, ROWS[0] + ",1", header=HEADER + ",age"))
    assert str(error) == "readings.csv: line 1, column age: appears twice in the header"


def test_an_empty_file_is_rejected(store: ReadingsStore, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert str(_reject(store, path)) == "empty.csv: line 1: no header line"


@pytest.mark.parametrize(
    ("edit", "column", "rule"),
    [
        ((",233,", ",lots,"), "chol", "expected a number"),
        ((",233,", ",2000,"), "chol", "outside 50..1000 mg/dl"),
        ((",2.3,", ",nan,"), "oldpeak", "expected a finite number"),
        ((",63,", ",63.5,"), "age", "expected a whole number"),
        ((",Male,", ",M,"), "sex", "not one of Female, Male"),
        ((",fixed defect,0", ",fixed defect,7"), "num", "outside 0..4 diagnosis grade"),
    ],
)
def test_a_bad_cell_rejects_the_whole_file_naming_line_and_column_not_the_value(
    store: ReadingsStore, tmp_path: Path, edit: tuple[str, str], column: str, rule: str
) -> None:
    bad = ROWS[0].replace(*edit, 1)
    path = _csv(tmp_path, ROWS[1], ROWS[2], bad)  # the bad row is the last: line 4

    error = _reject(store, path)

    # Exactly this: no cell of the file (the bad one or its neighbours) is echoed.
    assert str(error) == f"readings.csv: line 4, column {column}: {rule}"
    assert (error.line, error.column, error.rule) == (4, column, rule)
    assert error.__cause__ is None and error.__suppress_context__  # no chained parse error


def test_wrong_field_count_names_the_line(store: ReadingsStore, tmp_path: Path) -> None:
    error = _reject(store, _csv(tmp_path, ROWS[0], ROWS[1] + ",extra"))
    assert str(error) == "readings.csv: line 3: expected 16 fields, got 17"


def test_line_numbers_count_physical_lines(store: ReadingsStore, tmp_path: Path) -> None:
    # A blank line and a quoted field spanning two lines come before the bad row.
    quoted = ROWS[0].replace("Cleveland", '"Cleve\nland"')
    bad = ROWS[1].replace(",286,", ",-1,")
    error = _reject(store, _csv(tmp_path, quoted, "", bad))
    assert error.line == 5


def test_non_utf8_and_malformed_csv_are_rejected(store: ReadingsStore, tmp_path: Path) -> None:
    binary = tmp_path / "binary.csv"
    binary.write_bytes((HEADER + "\n").encode() + b"\xff\xfe\x00garbage\n")
    assert str(_reject(store, binary)) == "binary.csv: line 2: not UTF-8 text"

    stray_quote = _csv(tmp_path, ROWS[1], ROWS[0].replace(",Male,", ',"Ma"le,'), name="q.csv")
    assert str(_reject(store, stray_quote)) == (
        "q.csv: line 3: malformed CSV: ',' expected after '\"'"
    )


def test_a_byte_order_mark_does_not_break_the_header(store: ReadingsStore, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff".encode() + "\n".join([HEADER, *ROWS]).encode())
    assert store.ingest_csv(path, now=0.0).rows_added == 3


def test_a_failure_inside_the_transaction_rolls_everything_back(
    store: ReadingsStore, tmp_path: Path
) -> None:
    store.ingest_csv(_csv(tmp_path, ROWS[0], name="first.csv"), now=0.0)
    with sqlite3.connect(tmp_path / "readings.sqlite3") as db:  # the disk fills up at row 3
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON readings "
            "WHEN (SELECT count(*) FROM readings) >= 2 BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )

    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        store.ingest_csv(_csv(tmp_path, *ROWS, name="second.csv"), now=1.0)

    assert store.count() == 1  # not 2: the second file's first row went back out too
    assert [record.rows for record in store.ingests()] == [1]


def test_retention_by_rows_keeps_the_newest(tmp_path: Path) -> None:
    store = ReadingsStore(tmp_path / "r.sqlite3", retention_rows=2)
    store.ingest_csv(_csv(tmp_path, ROWS[0], name="a.csv"), now=0.0)

    result = store.ingest_csv(_csv(tmp_path, ROWS[1], ROWS[2], name="b.csv"), now=1.0)

    assert (result.rows_added, result.rows_expired) == (2, 1)
    assert [row["age"] for row in store.rows()] == [67.0, 37.0]


def test_retention_by_age_drops_old_ingests(tmp_path: Path) -> None:
    store = ReadingsStore(tmp_path / "r.sqlite3", retention_days=7)
    store.ingest_csv(_csv(tmp_path, ROWS[0], name="old.csv"), now=0.0)
    store.ingest_csv(_csv(tmp_path, ROWS[1], name="new.csv"), now=5 * DAY_S)

    assert store.apply_retention(now=6.9 * DAY_S) == 0
    assert store.apply_retention(now=7.5 * DAY_S) == 1
    assert [row["age"] for row in store.rows()] == [67.0]
    assert store.apply_retention(now=13 * DAY_S) == 1
    assert store.count() == 0


def test_the_store_survives_reopening_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with ReadingsStore(path) as store:
        store.ingest_csv(_csv(tmp_path, *ROWS), now=0.0)

    with ReadingsStore(path) as reopened:
        assert reopened.count() == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_store_of_another_schema_or_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    ReadingsStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'mnist' WHERE key = 'schema'")
    with pytest.raises(StoreError, match="holds mnist readings, not heart-uci"):
        ReadingsStore(path)

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="store version 99"):
        ReadingsStore(path)


def test_an_unknown_schema_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="heart-uci"):
        ReadingsStore(tmp_path / "r.sqlite3", schema="mnist")


def test_a_file_over_the_size_limit_is_refused_whole_and_left_as_it_was(
    store: ReadingsStore, tmp_path: Path
) -> None:
    path = _csv(tmp_path, *ROWS)
    before = path.read_bytes()
    limits = CsvLimits(max_bytes=len(before) - 1)

    error = _reject(store, path, limits)

    assert str(error) == (
        f"readings.csv: larger than the limit of {len(before) - 1} bytes (data.max_csv_bytes)"
    )
    assert path.read_bytes() == before  # nothing lost: the owner can split it and ingest again
    assert store.ingest_csv(path, limits=CsvLimits(max_bytes=len(before))).rows_added == 3


def test_a_file_over_the_row_limit_is_refused_at_the_first_row_past_it(
    store: ReadingsStore, tmp_path: Path
) -> None:
    path = _csv(tmp_path, *ROWS, "")  # a blank line is no row

    error = _reject(store, path, CsvLimits(max_rows=2))

    assert error.line == 4 and "more than the limit of 2 rows (data.max_csv_rows)" in str(error)
    assert store.ingest_csv(path, limits=CsvLimits(max_rows=3)).rows_added == 3


def test_an_overlong_record_is_refused_naming_its_line(
    store: ReadingsStore, tmp_path: Path
) -> None:
    path = _csv(tmp_path, ROWS[0], ROWS[1] + "," * 100)  # an extra column nobody reads

    error = _reject(store, path, CsvLimits(max_record_chars=len(ROWS[0]) + 1))

    assert error.line == 3 and "a record longer than" in str(error)


# ---------------------------------------------------------------- unlabelled readings

UNLABELLED = ROWS[1].removesuffix(",2") + ","  # the same reading, its label cell left empty


def test_unlabelled_readings_are_kept_apart_from_training_rows(
    store: ReadingsStore, tmp_path: Path
) -> None:
    result = store.ingest_csv(_csv(tmp_path, ROWS[0], UNLABELLED, ROWS[2]), now=0.0)

    assert (result.rows_added, result.rows_unlabelled) == (3, 1)
    assert store.count() == 2 and store.count_unlabelled() == 1
    assert all(row["num"] is not None for row in store.rows())  # what training reads
    (kept,) = store.unlabelled_rows()
    assert kept["num"] is None and kept["age"] == 67.0


def test_the_ingest_header_must_still_name_the_label_column(
    store: ReadingsStore, tmp_path: Path
) -> None:
    header = HEADER.removesuffix(",num")
    error = _reject(store, _csv(tmp_path, UNLABELLED.removesuffix(","), header=header))
    assert str(error) == "readings.csv: line 1: header lacks column(s): num"


def test_retention_covers_unlabelled_readings_too(tmp_path: Path) -> None:
    store = ReadingsStore(tmp_path / "r.sqlite3", retention_rows=2)
    store.ingest_csv(_csv(tmp_path, UNLABELLED, ROWS[0], ROWS[2]), now=0.0)
    assert (store.count(), store.count_unlabelled()) == (2, 0)  # the oldest row went


def test_a_version_1_store_is_migrated_without_losing_a_row(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    with sqlite3.connect(path) as db:  # the tables exactly as version 1 created them
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE ingests (id INTEGER PRIMARY KEY, content_sha256 TEXT NOT NULL "
            "UNIQUE, ingested_at REAL NOT NULL, rows INTEGER NOT NULL)"
        )
        db.execute(
            "CREATE TABLE readings (id INTEGER PRIMARY KEY AUTOINCREMENT, ingest_id INTEGER "
            "NOT NULL REFERENCES ingests(id), ingested_at REAL NOT NULL, reading TEXT NOT NULL)"
        )
        db.execute("INSERT INTO meta VALUES ('schema', 'heart-uci')")
        db.execute("INSERT INTO ingests VALUES (1, 'ab', 0.0, 2)")
        for age in (50, 60):
            reading = f'{{"age": {age}, "num": 1.0}}'
            db.execute("INSERT INTO readings VALUES (NULL, 1, 0.0, ?)", (reading,))
        db.execute("PRAGMA user_version = 1")

    with ReadingsStore(path) as store:
        assert [row["age"] for row in store.rows()] == [50, 60]
        assert store.count_unlabelled() == 0
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
