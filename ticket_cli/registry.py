"""The ticket registry: a SQLite index of signed tickets over a content-addressed blob store.

Layout under the registry root (docs/ticket-format.md, "Ticket registry"):

    index.sqlite3                   one row per ticket (schema version SCHEMA_VERSION, WAL)
    blobs/<id[:2]>/<id>.ticket      the published file, byte for byte, read-only
    trusted/*.pub                   public keys trusted on publish and pull, besides --key

A ticket is indexed only after its signature verified against a trusted key; it is handed
out only after its bytes hash to what was published and the signature verifies again.
"""

import builtins
import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ticket import crypto
from ticket.atomic import atomic_write_bytes
from ticket.bundle import Ticket, decode_ticket, read_ticket_bytes
from ticket.errors import IntegrityError, TicketError, UnknownNameError

SCHEMA_VERSION = 1
INDEX_NAME = "index.sqlite3"
BLOBS_DIR = "blobs"
TRUSTED_DIR = "trusted"
BLOB_SUFFIX = ".ticket"
MIN_PREFIX_CHARS = 8
SHORT_ID_CHARS = 12
BLOB_MODE = 0o444

# Sort keys of `list`: sparsest first, best metric first, newest first; ties by content id.
ORDERS: dict[str, str] = {
    "created": "created_at DESC",
    "published": "published_at DESC",
    "density": "density ASC",
    "accuracy": "accuracy IS NULL, accuracy DESC",
    "auc": "auc IS NULL, auc DESC",
}

_PREFIX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX_CHARS},64}}")
_MAX_AMBIGUOUS_SHOWN = 5
_BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE tickets (
    content_id    TEXT PRIMARY KEY,
    model         TEXT NOT NULL,
    model_args    TEXT NOT NULL,
    task          TEXT NOT NULL,
    sites         TEXT,
    density       REAL NOT NULL,
    kept_weights  INTEGER NOT NULL,
    total_weights INTEGER NOT NULL,
    accuracy      REAL,
    auc           REAL,
    metrics       TEXT NOT NULL,
    method        TEXT NOT NULL,
    rewind_step   INTEGER NOT NULL,
    parent        TEXT,
    created_at    TEXT NOT NULL,
    signers       TEXT NOT NULL,
    verified_by   TEXT NOT NULL,
    published_at  TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    blob_sha256   TEXT NOT NULL
);
CREATE INDEX tickets_task ON tickets (task);
CREATE INDEX tickets_model ON tickets (model);
CREATE INDEX tickets_density ON tickets (density);
"""
_COLUMNS = (
    "content_id, model, model_args, task, sites, density, kept_weights, total_weights, "
    "accuracy, auc, metrics, method, rewind_step, parent, created_at, signers, verified_by, "
    "published_at, size_bytes, blob_sha256"
)
_JSON_COLUMNS = {"model_args", "sites", "metrics", "signers", "verified_by"}


class RegistryError(TicketError):
    """The registry cannot do what was asked: no such ticket, ambiguous id, damaged index."""


@dataclass(frozen=True)
class Entry:
    """One indexed ticket: what it is, what it is good for, and who vouched for it."""

    content_id: str
    model: str  # manifest model.name
    model_args: dict[str, Any]  # manifest model.args
    task: str  # manifest data.name: the dataset (task) the ticket was found on
    sites: list[str] | None  # manifest data.sites, when it lists natural sites
    density: float  # manifest density.overall
    kept_weights: int  # ones in the masks
    total_weights: int  # size of the masks (prunable weights only)
    accuracy: float | None  # the final level's test accuracy, when recorded
    auc: float | None  # the final level's ROC-AUC, when recorded
    metrics: dict[str, float]  # every numeric metric of the final level
    method: str  # manifest method.name
    rewind_step: int
    parent: str | None
    created_at: str  # when the ticket was found, ISO 8601 UTC
    signers: list[str]  # key ids of every signature in the stored file
    verified_by: list[str]  # the trusted key ids whose signature verified at publish
    published_at: str  # when it entered this registry, ISO 8601 UTC
    size_bytes: int
    blob_sha256: str  # hex SHA-256 of the stored file (content id + signatures)

    @property
    def short_id(self) -> str:
        return self.content_id[:SHORT_ID_CHARS]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Outcome(StrEnum):
    ADDED = "added"
    UNCHANGED = "unchanged"  # already published, its stored file intact: nothing was written
    REPAIRED = "repaired"  # already indexed, but its stored file was lost or damaged


@dataclass(frozen=True)
class Published:
    entry: Entry
    outcome: Outcome


class TicketRegistry:
    """A registry rooted at `root`; `create=False` refuses a root that holds no registry."""

    def __init__(
        self,
        root: Path,
        *,
        create: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.root = Path(root)
        self.index_path = self.root / INDEX_NAME
        self._clock = clock
        if not self.index_path.is_file():
            if not create:
                raise RegistryError(f"no ticket registry at {self.root}; publish a ticket first")
            self.root.mkdir(parents=True, exist_ok=True)
        with _database_errors(self.index_path):
            self._db = sqlite3.connect(
                self.index_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None
            )
        try:
            self._open_schema()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TicketRegistry":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ operations

    def publish(self, path: Path, trusted_keys: Sequence[bytes] = ()) -> Published:
        """Verify the ticket at `path` against the trusted keys, store it and index it.

        Publishing a content id that is already indexed changes nothing (UNCHANGED), even
        when this copy carries other signatures; but when the stored file was lost or
        damaged, this verified copy replaces it and its row (REPAIRED).
        """
        keys = self.trusted_keys(trusted_keys)
        data = read_ticket_bytes(path)  # verified and stored from this one (bounded) read
        ticket = decode_ticket(data, trusted_keys=keys)
        published_at = _utc_text(self._clock().replace(microsecond=0))
        entry = _entry_of(ticket, data, keys, published_at=published_at)
        with self._transaction():
            existing = self._select("WHERE content_id = ?", (entry.content_id,))
            if existing and self._is_blob_intact(existing[0]):
                return Published(existing[0], Outcome.UNCHANGED)
            # Blob before row: the index never names a blob that is not on disk.
            blob = self.blob_path(entry.content_id)
            blob.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(blob, data, mode=BLOB_MODE)
            row = _row_of(entry)
            placeholders = ", ".join("?" * len(row))
            self._db.execute(
                f"INSERT OR REPLACE INTO tickets ({_COLUMNS}) VALUES ({placeholders})", row
            )
        return Published(entry, Outcome.REPAIRED if existing else Outcome.ADDED)

    def list(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        max_density: float | None = None,
        min_accuracy: float | None = None,
        min_density: float | None = None,
        signer: str | None = None,
        parent: str | None = None,
        order_by: str = "created",
        limit: int | None = None,
    ) -> builtins.list[Entry]:
        """Entries matching every filter given; a ticket with no accuracy fails `min_accuracy`.

        `signer` is a key id that verified the ticket at publish; `parent` a content id the
        tickets derive from (their lineage); `limit` keeps the first rows.
        """
        if order_by not in ORDERS:
            raise UnknownNameError("sort key", order_by, list(ORDERS))
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in [
            ("task = ?", task),
            ("model = ?", model),
            ("density <= ?", max_density),
            ("density >= ?", min_density),
            ("accuracy >= ?", min_accuracy),
            ("EXISTS (SELECT 1 FROM json_each(verified_by) WHERE value = ?)", signer),
            ("parent = ?", parent),
        ]:
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        return self._select(f"{where} ORDER BY {ORDERS[order_by]}, content_id{tail}", params)

    def show(self, id_or_prefix: str) -> Entry:
        """The one entry whose content id starts with `id_or_prefix` (>= 8 hex characters)."""
        prefix = id_or_prefix.strip().lower()
        if not _PREFIX.fullmatch(prefix):
            raise RegistryError(
                f"a ticket id is {MIN_PREFIX_CHARS} to 64 hex characters, got {id_or_prefix!r}"
            )
        # GLOB is case-sensitive and, the prefix being hex, free of wildcards.
        found = self._select(
            f"WHERE content_id GLOB ? ORDER BY content_id LIMIT {_MAX_AMBIGUOUS_SHOWN + 1}",
            (prefix + "*",),
        )
        if not found:
            raise RegistryError(f"no ticket {prefix} in the registry at {self.root}")
        if len(found) > 1:
            shown = ", ".join(e.short_id for e in found[:_MAX_AMBIGUOUS_SHOWN])
            more = ", ..." if len(found) > _MAX_AMBIGUOUS_SHOWN else ""
            raise RegistryError(
                f"ticket id {prefix} is ambiguous: it starts {shown}{more}; give more characters"
            )
        return found[0]

    def pull(
        self,
        id_or_prefix: str,
        out: Path,
        trusted_keys: Sequence[bytes] = (),
        *,
        overwrite: bool = False,
    ) -> Entry:
        """Copy the ticket's file to `out` after checking its bytes and signature again.

        Nothing is written to `out` unless every check passes.
        """
        entry = self.show(id_or_prefix)
        keys = self.trusted_keys(trusted_keys)
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists; pass --force to overwrite it")
        data = self.read_blob(entry)
        ticket = decode_ticket(data, trusted_keys=keys)
        if ticket.content_id != entry.content_id:
            raise IntegrityError(f"the stored copy of ticket {entry.short_id} is not that ticket")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, data)
        return entry

    # ------------------------------------------------------------ storage

    def blob_path(self, content_id: str) -> Path:
        return self.root / BLOBS_DIR / content_id[:2] / f"{content_id}{BLOB_SUFFIX}"

    def read_blob(self, entry: Entry) -> bytes:
        """The stored file's bytes; IntegrityError unless they are exactly what was published."""
        try:
            data = self.blob_path(entry.content_id).read_bytes()
        except FileNotFoundError:
            raise RegistryError(
                f"the registry at {self.root} has lost the file of ticket {entry.short_id}; "
                "publishing the ticket again repairs it"
            ) from None
        if hashlib.sha256(data).hexdigest() != entry.blob_sha256:
            raise IntegrityError(
                f"the stored copy of ticket {entry.short_id} is corrupt; "
                "publishing the ticket again repairs it"
            )
        return data

    def _is_blob_intact(self, entry: Entry) -> bool:
        try:
            self.read_blob(entry)
        except (RegistryError, IntegrityError):
            return False
        return True

    def trusted_keys(self, extra: Sequence[bytes] = ()) -> builtins.list[bytes]:
        """`extra` plus the keys in `root/trusted/*.pub`; RegistryError when there are none."""
        keys = list(extra)
        for path in sorted((self.root / TRUSTED_DIR).glob("*.pub")):
            pem = path.read_bytes()
            try:
                crypto.load_public_key(pem)
            except crypto.KeyFormatError as error:
                raise crypto.KeyFormatError(f"{path}: {error}") from error
            keys.append(pem)
        if not keys:
            raise RegistryError(
                "no trusted key: pass the fleet's public key with --key PUB, or copy it into "
                f"{self.root / TRUSTED_DIR}/"
            )
        return keys

    # ------------------------------------------------------------ index

    def _open_schema(self) -> None:
        with _database_errors(self.index_path):
            version = self._user_version()
            if version == 0:
                self._db.execute("PRAGMA journal_mode=WAL")  # persistent; not in a transaction
                with self._transaction():
                    if self._user_version() == 0:  # another process may have won the race
                        # One statement at a time: executescript would COMMIT first.
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                self._db.execute(statement)
                        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                version = self._user_version()
        if version != SCHEMA_VERSION:
            raise RegistryError(
                f"{self.index_path} has registry schema version {version}; this version of "
                f"ticketfleet reads version {SCHEMA_VERSION}"
            )

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction: IMMEDIATE takes the write lock up front, so two publishers
        of the same ticket are serialised instead of both writing its blob."""
        with _database_errors(self.index_path):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self._db.in_transaction:  # SQLite has already rolled back after some errors
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, tail: str, params: Sequence[Any]) -> builtins.list[Entry]:
        with _database_errors(self.index_path):
            cursor = self._db.execute(f"SELECT {_COLUMNS} FROM tickets {tail}", params)
            names = [column[0] for column in cursor.description]
            return [_entry_of_row(dict(zip(names, row, strict=True))) for row in cursor]


# ---------------------------------------------------------------- rows


def _entry_of(
    ticket: Ticket, data: bytes, trusted_keys: Sequence[bytes], *, published_at: str
) -> Entry:
    manifest = ticket.manifest
    final = final_metrics(manifest.metrics)
    trusted = {crypto.key_id(pem) for pem in trusted_keys}
    signers = [s.key_id for s in ticket.signatures]
    return Entry(
        content_id=ticket.content_id,
        model=manifest.model.name,
        model_args=dict(manifest.model.args),
        task=manifest.data.name,
        sites=None if manifest.data.sites is None else list(manifest.data.sites),
        density=float(manifest.density.overall),
        kept_weights=sum(int(np.count_nonzero(mask)) for mask in ticket.masks.values()),
        total_weights=sum(int(mask.size) for mask in ticket.masks.values()),
        accuracy=final.get("accuracy"),
        auc=final.get("auc"),
        metrics=final,
        method=manifest.method.name,
        rewind_step=manifest.rewind_step,
        parent=manifest.parent,
        created_at=_utc_text(datetime.fromisoformat(manifest.created_at)),
        signers=signers,
        verified_by=[key_id for key_id in signers if key_id in trusted],
        published_at=published_at,
        size_bytes=len(data),
        blob_sha256=hashlib.sha256(data).hexdigest(),
    )


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of the final (sparsest) level.

    Read from `metrics.final` (what `ticket find` writes), else from the last of
    `metrics.levels` (its `ticket` object, or the level itself), else from `metrics` itself.
    """
    final: Any = metrics.get("final")
    if not isinstance(final, dict):
        levels = metrics.get("levels")
        if isinstance(levels, list) and levels and isinstance(levels[-1], dict):
            last = levels[-1]
            final = last["ticket"] if isinstance(last.get("ticket"), dict) else last
        else:
            final = metrics
    return {
        key: value
        for key, value in final.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _row_of(entry: Entry) -> tuple[Any, ...]:
    values = entry.as_dict()
    return tuple(
        json.dumps(value, sort_keys=True)
        if name in _JSON_COLUMNS and (value := values[name]) is not None
        else values[name]
        for name in _COLUMNS.split(", ")
    )


def _entry_of_row(row: dict[str, Any]) -> Entry:
    return Entry(
        **{
            name: json.loads(value) if name in _JSON_COLUMNS and value is not None else value
            for name, value in row.items()
        }
    )


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@contextmanager
def _database_errors(path: Path) -> Iterator[None]:
    """sqlite3's errors (locked, not a database, disk full) as RegistryError naming the file."""
    try:
        yield
    except sqlite3.Error as error:
        raise RegistryError(f"{path}: {error}") from error
