"""The device's private readings: CSV files checked against a schema, kept in one SQLite file.

A file goes in whole or not at all: every row is validated before the single transaction that
inserts it, and the transaction rolls back on any failure. Error messages name the file, the line
and the column and the rule broken, never a value: readings are private.

Retention is applied in the same transaction as each ingest and whenever `apply_retention` is
called (the daemon calls it on a timer, as age limits lapse with no ingest): the oldest rows go
beyond `retention_rows`, and rows ingested more than `retention_days` ago. A reading carries no
time of its own in the heart-uci schema, so its age is the time since it was ingested.

A reading whose label cell is empty is stored apart from the training rows (`labelled = 0`):
the owner wants a prediction for it, and training and evaluation (`rows`) never see it.
`unlabelled_rows` is what `edge-daemon predict --stored` reads. Retention covers both.
"""

import csv
import hashlib
import io
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ticket.registry import Registry

# PRAGMA user_version of a store this module writes. Version 2 added readings.labelled; a
# version 1 store is migrated in place (every row it holds was labelled) when opened.
STORE_VERSION = 2
_SECONDS_PER_DAY = 86_400.0

Cell = float | str | None  # a parsed cell; None = not recorded
Reading = dict[str, Cell]


class IngestError(Exception):
    """A CSV file was rejected; nothing of it was stored."""

    def __init__(
        self,
        source: str,
        rule: str,
        *,
        line: int | None = None,
        column: str = "",
        row: int | None = None,  # 0-based data row, when the reader counts them (predict)
    ) -> None:
        where = [f"line {line}"] if line else []
        where += [f"row {row}"] if row is not None else []
        where += [f"column {column}"] if column else []
        super().__init__(": ".join([source, ", ".join(where), rule] if where else [source, rule]))
        self.source = source
        self.line = line
        self.column = column
        self.rule = rule
        self.row = row


class StoreError(Exception):
    """The database is not a readings store of this version and schema."""


@dataclass(frozen=True)
class RowSchema:
    name: str
    columns: tuple[str, ...]  # every column a file must have (features, then the label)
    label: str  # the label column: an empty cell is an unlabelled reading (parsed as None)
    # (column, raw text) -> value; ValueError whose message states the rule, never the value.
    parse_cell: Callable[[str, str], Cell]
    describe: Callable[[], dict[str, Any]]  # columns, types and ranges as JSON


def _heart_uci() -> RowSchema:
    # Imported on first ingest only: heart_encoding needs numpy, and an idle daemon that merely
    # opens its store should not load it.
    from ticket.data import heart_encoding as heart

    columns = {column.name: column for column in (*heart.HEART_SCHEMA, heart.HEART_TARGET)}

    def parse_cell(name: str, raw: str) -> Cell:
        column = columns[name]
        try:
            value = heart.parse_cell(column, raw)
        except heart.ReadingError as error:
            raise ValueError(str(error).removeprefix(f"{name}: ")) from None
        return value

    return RowSchema(
        "heart-uci", tuple(columns), heart.HEART_TARGET.name, parse_cell, heart.describe_schema
    )


SCHEMAS: Registry[Callable[[], RowSchema]] = Registry("readings schema", {"heart-uci": _heart_uci})


@dataclass(frozen=True)
class CsvLimits:
    """What one CSV file may hold; a file past a limit is refused whole (daemon.yaml data.*)."""

    max_bytes: int = 64 * 1024 * 1024  # a heart-uci row is ~60 bytes: a million rows fit
    max_rows: int = 1_000_000
    max_record_chars: int = 64 * 1024  # one record (line), all its fields together


def read_csv(
    path: Path,
    schema: RowSchema,
    *,
    limits: CsvLimits = CsvLimits(),
    label_optional: bool = False,
) -> tuple[list[Reading], str]:
    """Every row of `path` parsed against `schema`, and the SHA-256 of the file's bytes.

    Columns beyond the schema's (an id, a site name) are ignored and never stored. A file over
    `limits` is refused before it is parsed (its size) or as soon as a record or the row count
    passes its limit, so an oversized file costs neither the memory nor the time to read it all.
    `label_optional`: the header may lack the label column (rows to predict, never stored).
    """
    data = read_bounded(path, limits)
    return parse_csv(data, path.name, schema, limits=limits, label_optional=label_optional)


def read_bounded(path: Path, limits: CsvLimits) -> bytes:
    """The bytes of `path` (a file or a pipe), refused past `limits.max_bytes`."""
    source = path.name
    too_large = f"larger than the limit of {limits.max_bytes} bytes (data.max_csv_bytes)"
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size > limits.max_bytes:
                raise IngestError(source, too_large)  # refused before a byte is read
            data = handle.read(limits.max_bytes + 1)  # a pipe has no size: read no more
    except OSError as error:
        raise IngestError(source, f"cannot read: {error.strerror}") from None
    if len(data) > limits.max_bytes:
        raise IngestError(source, too_large)
    return data


def parse_csv(
    data: bytes,
    source: str,
    schema: RowSchema,
    *,
    limits: CsvLimits = CsvLimits(),
    label_optional: bool = False,
) -> tuple[list[Reading], str]:
    """`read_csv` of bytes already read (e.g. standard input), named `source` in errors."""
    if len(data) > limits.max_bytes:
        raise IngestError(source, f"larger than the limit of {limits.max_bytes} bytes")
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of a name
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise IngestError(source, "not UTF-8 text", line=line) from None
    records = _records(text, source, limits)
    readings = _parse_rows(records, source, schema, label_optional=label_optional)
    return readings, hashlib.sha256(data).hexdigest()


def _records(text: str, source: str, limits: CsvLimits) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each CSV record; a quoted field may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # stray quotes are errors
    rows = -1  # the header is no row
    try:
        for fields in reader:
            if sum(map(len, fields)) + len(fields) > limits.max_record_chars:  # with commas
                rule = f"a record longer than {limits.max_record_chars} characters"
                raise IngestError(source, rule, line=reader.line_num)
            rows += 1 if fields else 0
            if rows > limits.max_rows:
                rule = f"more than the limit of {limits.max_rows} rows (data.max_csv_rows)"
                raise IngestError(source, rule, line=reader.line_num)
            yield reader.line_num, fields
    except csv.Error as error:
        raise IngestError(source, f"malformed CSV: {error}", line=reader.line_num) from None


def _parse_rows(
    records: Iterator[tuple[int, list[str]]],
    source: str,
    schema: RowSchema,
    *,
    label_optional: bool = False,
) -> list[Reading]:
    header = [name.strip() for name in next(records, (1, []))[1]]
    if not header:
        raise IngestError(source, "no header line", line=1)
    for name in header:
        if header.count(name) > 1:
            raise IngestError(source, "appears twice in the header", line=1, column=name)
    columns = [
        name
        for name in schema.columns
        if not (label_optional and name == schema.label and name not in header)
    ]
    missing = [name for name in columns if name not in header]
    if missing:
        raise IngestError(source, f"header lacks column(s): {', '.join(missing)}", line=1)
    positions = {name: header.index(name) for name in columns}
    readings: list[Reading] = []
    for line, fields in records:
        if not fields:
            continue  # a blank line, e.g. at the end of the file
        # Rows to predict (label optional) are named by index too, as predict's output names them.
        row = len(readings) if label_optional else None
        if len(fields) != len(header):
            rule = f"expected {len(header)} fields, got {len(fields)}"
            raise IngestError(source, rule, line=line, row=row)
        reading: Reading = {schema.label: None}  # a label column left out: unlabelled
        for name, position in positions.items():
            try:
                reading[name] = schema.parse_cell(name, fields[position])
            except ValueError as error:
                raise IngestError(source, str(error), line=line, column=name, row=row) from None
        readings.append(reading)
    return readings


@dataclass(frozen=True)
class IngestResult:
    rows_added: int
    rows_expired: int  # removed by retention in the same transaction
    is_duplicate: bool  # these exact bytes were ingested before: nothing added
    content_sha256: str
    ingested_at: float  # Unix seconds
    rows_unlabelled: int = 0  # of rows_added: no label, kept for `predict --stored` only


@dataclass(frozen=True)
class IngestRecord:
    content_sha256: str
    ingested_at: float  # Unix seconds
    rows: int  # rows the file added then (retention may have removed some since)


_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS ingests (
        id INTEGER PRIMARY KEY,
        content_sha256 TEXT NOT NULL UNIQUE,
        ingested_at REAL NOT NULL,
        rows INTEGER NOT NULL
    )""",
    # AUTOINCREMENT: ids are never reused, so id order is ingest order even after deletions.
    """CREATE TABLE IF NOT EXISTS readings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ingest_id INTEGER NOT NULL REFERENCES ingests(id),
        ingested_at REAL NOT NULL,
        reading TEXT NOT NULL, -- JSON object: column -> parsed value
        labelled INTEGER NOT NULL DEFAULT 1 -- 0: no label; never trained or evaluated on
    )""",
    "CREATE INDEX IF NOT EXISTS readings_by_age ON readings (ingested_at)",
)


class ReadingsStore:
    """One SQLite file of readings of one schema; use as a context manager or call `close`."""

    def __init__(
        self,
        path: Path,
        *,
        schema: str = "heart-uci",
        retention_rows: int | None = None,
        retention_days: float | None = None,
    ) -> None:
        self._schema_loader = SCHEMAS[schema]  # unknown names fail here, listing the valid ones
        self._schema_name = schema
        self._retention_rows = retention_rows
        self._retention_days = retention_days
        # Create the file private before SQLite does (its journal files copy this mode).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        # isolation_level=None: transactions are exactly the BEGIN/COMMIT written below.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        try:
            self._prepare(path)
        except BaseException:
            self._db.close()
            raise

    def _prepare(self, path: Path) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, STORE_VERSION):
            raise StoreError(f"{path}: store version {version}, this daemon reads {STORE_VERSION}")
        self._db.execute("PRAGMA journal_mode=WAL")  # the ClientApp reads while an ingest writes
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged ingest survives power loss
        with self._transaction():
            for statement in _TABLES:  # not executescript: it would COMMIT our transaction
                self._db.execute(statement)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(readings)")}
            if "labelled" not in columns:  # a version 1 store: all its rows carry a label
                self._db.execute(
                    "ALTER TABLE readings ADD COLUMN labelled INTEGER NOT NULL DEFAULT 1"
                )
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (self._schema_name,)
            )
            self._db.execute(f"PRAGMA user_version = {STORE_VERSION}")
        stored = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        if stored != self._schema_name:
            raise StoreError(f"{path}: holds {stored} readings, not {self._schema_name}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ReadingsStore":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def ingest_csv(
        self, path: Path, *, now: float | None = None, limits: CsvLimits = CsvLimits()
    ) -> IngestResult:
        """Validate all of `path`, then store it in one transaction; IngestError stores nothing."""
        schema = self._schema_loader()
        readings, digest = read_csv(path, schema, limits=limits)
        at = time.time() if now is None else now
        with self._transaction():
            seen = self._db.execute(
                "SELECT ingested_at FROM ingests WHERE content_sha256 = ?", (digest,)
            ).fetchone()
            if seen is not None:  # the same export fed twice must not double its rows
                return IngestResult(0, 0, True, digest, seen[0])
            ingest_id = self._db.execute(
                "INSERT INTO ingests (content_sha256, ingested_at, rows) VALUES (?, ?, ?)",
                (digest, at, len(readings)),
            ).lastrowid
            self._db.executemany(
                "INSERT INTO readings (ingest_id, ingested_at, reading, labelled) "
                "VALUES (?, ?, ?, ?)",
                (
                    (ingest_id, at, json.dumps(reading), reading[schema.label] is not None)
                    for reading in readings
                ),
            )
            expired = self._expire(at)
        unlabelled = sum(reading[schema.label] is None for reading in readings)
        return IngestResult(len(readings), expired, False, digest, at, unlabelled)

    def apply_retention(self, *, now: float | None = None) -> int:
        """Delete readings beyond the retention limits; the number deleted."""
        with self._transaction():
            return self._expire(time.time() if now is None else now)

    def _expire(self, now: float) -> int:
        deleted = 0
        if self._retention_days is not None:
            cutoff = now - self._retention_days * _SECONDS_PER_DAY
            deleted += self._db.execute(
                "DELETE FROM readings WHERE ingested_at < ?", (cutoff,)
            ).rowcount
        if self._retention_rows is not None:
            deleted += self._db.execute(
                "DELETE FROM readings WHERE id NOT IN "
                "(SELECT id FROM readings ORDER BY id DESC LIMIT ?)",
                (self._retention_rows,),
            ).rowcount
        return deleted

    def count(self) -> int:
        """Labelled readings: the ones training uses."""
        count: int = self._db.execute(
            "SELECT count(*) FROM readings WHERE labelled = 1"
        ).fetchone()[0]
        return count

    def count_unlabelled(self) -> int:
        count: int = self._db.execute(
            "SELECT count(*) FROM readings WHERE labelled = 0"
        ).fetchone()[0]
        return count

    def rows(self) -> list[Reading]:
        """Every labelled reading, oldest first, as column -> parsed value: training's rows."""
        cursor = self._db.execute("SELECT reading FROM readings WHERE labelled = 1 ORDER BY id")
        return [json.loads(text) for (text,) in cursor]

    def unlabelled_rows(self) -> list[Reading]:
        """The readings stored without a label, oldest first: for prediction only."""
        cursor = self._db.execute("SELECT reading FROM readings WHERE labelled = 0 ORDER BY id")
        return [json.loads(text) for (text,) in cursor]

    def ingests(self) -> list[IngestRecord]:
        cursor = self._db.execute(
            "SELECT content_sha256, ingested_at, rows FROM ingests ORDER BY id"
        )
        return [IngestRecord(digest, at, rows) for digest, at, rows in cursor]
