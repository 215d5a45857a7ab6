"""A node's local data: the device's own readings store, or one partition of a registered dataset.

A device run by `edge-daemon` trains on the readings its owner ingested (`StoreSpec`, node config
`readings-db`); demos, benchmarks and the Simulation Engine use a partition of a public dataset
(`LocalDataSpec`, node config `dataset`). The ClientApp only sees `LocalData`: numpy arrays, so
a device's ClientApp never imports torch (a registered dataset's loader still does).
"""

import functools
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ticket import wire
from ticket.data import load_dataset
from ticket.data.partition import IndexArray, partition
from ticket.errors import TicketError

if TYPE_CHECKING:
    from edge_daemon.readings import Reading
    from ticket.data import Dataset
    from ticket.data.heart_encoding import HeartPreprocessor

ConfigValue = bool | float | int | str

# node config key -> partitioner option, for the schemes that take options.
_PARTITION_OPTIONS = {
    wire.NODE_PARTITION_ALPHA: "alpha",
    wire.NODE_PARTITION_MIN_SIZE: "min_size",
    wire.NODE_PARTITION_SHARDS: "shards_per_client",
}


class LocalDataError(Exception):
    """The node config names no usable local data; the node sits this round out."""


@dataclass(frozen=True)
class LocalDataSpec:
    """Which slice of which dataset this node trains on (node config keys in brackets)."""

    dataset: str  # [dataset] registry name, e.g. "heart-uci"
    partition_id: int  # [partition-id] 0-based
    num_partitions: int  # [num-partitions]
    partition: str = "natural"  # [partition] partitioner registry name
    seed: int = 0  # [partition-seed] every node of a fleet must use the same seed
    options: tuple[tuple[str, float | int], ...] = ()  # partitioner options, sorted

    @classmethod
    def from_node_config(cls, config: Mapping[str, ConfigValue]) -> "LocalDataSpec":
        options = tuple(
            sorted(
                (option, _number(config, key))
                for key, option in _PARTITION_OPTIONS.items()
                if key in config
            )
        )
        spec = cls(
            dataset=_text(config, wire.NODE_DATASET),
            partition_id=_whole(config, wire.NODE_PARTITION_ID),
            num_partitions=_whole(config, wire.NODE_NUM_PARTITIONS),
            partition=_text(config, wire.NODE_PARTITION)
            if wire.NODE_PARTITION in config
            else "natural",
            seed=_whole(config, wire.NODE_PARTITION_SEED)
            if wire.NODE_PARTITION_SEED in config
            else 0,
            options=options,
        )
        if not 0 <= spec.partition_id < spec.num_partitions:
            raise LocalDataError(
                f"node config: partition-id must be in [0, {spec.num_partitions}), "
                f"got {spec.partition_id}"
            )
        return spec


@dataclass(frozen=True)
class StoreSpec:
    """The device's readings store (node config keys in brackets)."""

    path: Path  # [readings-db] the SQLite file `edge-daemon ingest` writes
    schema: str = "heart-uci"  # [readings-schema]
    test_every: int = 5  # every 5th reading (in ingest order) is held out for local evaluation
    retention_rows: int | None = None  # [retention-rows] daemon.yaml's data.retention_rows
    retention_days: float | None = None  # [retention-days] daemon.yaml's data.retention_days

    @classmethod
    def from_node_config(cls, config: Mapping[str, ConfigValue]) -> "StoreSpec":
        schema = config.get(wire.NODE_READINGS_SCHEMA, "heart-uci")
        if not isinstance(schema, str):
            raise LocalDataError(f"node config: readings-schema must be a name, got {schema!r}")
        rows = (
            _whole(config, wire.NODE_RETENTION_ROWS) if wire.NODE_RETENTION_ROWS in config else None
        )
        days = (
            _number(config, wire.NODE_RETENTION_DAYS)
            if wire.NODE_RETENTION_DAYS in config
            else None
        )
        if (rows is not None and rows < 1) or (days is not None and not days > 0):
            raise LocalDataError("node config: retention-rows must be >= 1, retention-days > 0")
        return cls(
            path=Path(_text(config, wire.NODE_READINGS_DB)),
            schema=schema,
            retention_rows=rows,
            retention_days=None if days is None else float(days),
        )


# eq=False: field-wise == on arrays is ambiguous.
@dataclass(frozen=True, eq=False)
class LocalData:
    x_train: npt.NDArray[np.float32]  # [N, F]
    y_train: npt.NDArray[np.int64]  # [N]
    x_test: npt.NDArray[np.float32]  # [M, F]
    y_test: npt.NDArray[np.int64]  # [M]


def load_local_data(
    spec: LocalDataSpec, preprocessing: Mapping[str, Any] | None = None
) -> LocalData:
    """This node's training and test rows; LocalDataError when the slice is unusable or empty.

    Features are encoded with `preprocessing` (the ticket manifest's `data.preprocessing`) when
    given: a ticket found on one hospital expects that hospital's fitted encoder, not one fitted
    on the whole fleet. Train and test rows are partitioned with the same scheme and seed.
    """
    try:
        dataset = _encoded_dataset(spec.dataset, _canonical(preprocessing))
        # The loaders hold CPU tensors; np.asarray shares their memory, no copy.
        x_train = np.asarray(dataset.x_train, dtype=np.float32)  # [N, F...]
        x_test = np.asarray(dataset.x_test, dtype=np.float32)  # [M, F...]
        y_train = np.asarray(dataset.y_train, dtype=np.int64)  # [N]
        y_test = np.asarray(dataset.y_test, dtype=np.int64)  # [M]
        train_parts, test_parts = _fleet_split(
            replace(spec, partition_id=0), _canonical(preprocessing)
        )
    except TicketError as error:
        raise LocalDataError(f"local data ({spec.dataset}, {spec.partition}): {error}") from error
    train_rows = train_parts[spec.partition_id]
    test_rows = test_parts[spec.partition_id]
    if train_rows.size == 0:
        raise LocalDataError(
            f"local data ({spec.dataset}, {spec.partition}): "
            f"partition {spec.partition_id} has no training rows"
        )
    return LocalData(
        x_train=x_train[train_rows],
        y_train=y_train[train_rows],
        x_test=x_test[test_rows],
        y_test=y_test[test_rows],
    )


def partition_rows(spec: LocalDataSpec) -> "list[dict[str, str]]":
    """The raw training rows of this node's partition, in the order training reads them;
    LocalDataError for a dataset that has no raw rows (only heart-uci has)."""
    if spec.dataset != "heart-uci":
        raise LocalDataError(f"dataset {spec.dataset!r} has no raw readings to count")
    from ticket.data.heart import heart_training_rows

    try:
        rows = heart_training_rows()
        train_parts, _ = _fleet_split(replace(spec, partition_id=0), None)
    except TicketError as error:
        raise LocalDataError(f"local data ({spec.dataset}, {spec.partition}): {error}") from error
    return [rows[int(index)] for index in train_parts[spec.partition_id]]


def load_store_data(spec: StoreSpec, preprocessing: Mapping[str, Any] | None) -> LocalData:
    """The device's readings, encoded as the ticket expects; LocalDataError when there are none.

    Retention is applied first, so a reading past `retention_days` is never trained on, even if
    the daemon's hourly purge has not come round yet. Errors never quote a reading: they may end
    up in an Error reply the server sees.
    """
    encoder = readings_encoder(spec.schema, preprocessing)
    rows = store_rows(spec)
    try:
        features = encoder.transform(rows)  # float32 [R, F]
        labels = encoder.labels(rows)  # int64 [R]
    except TicketError as error:
        raise LocalDataError(f"device readings unusable: {type(error).__name__}") from None
    held_out = held_out_rows(len(rows), spec)
    return LocalData(
        x_train=features[~held_out],
        y_train=labels[~held_out],
        x_test=features[held_out],
        y_test=labels[held_out],
    )


def store_rows(spec: StoreSpec) -> "list[Reading]":
    """The device's labelled readings, oldest first, retention applied first; LocalDataError
    when there are none or the store cannot be read (naming no reading)."""
    from edge_daemon.readings import ReadingsStore, StoreError

    if not spec.path.exists():
        raise LocalDataError("no readings on this device yet (edge-daemon ingest)")
    try:
        store = ReadingsStore(
            spec.path,
            schema=spec.schema,
            retention_rows=spec.retention_rows,
            retention_days=spec.retention_days,
        )
        with store:
            if spec.retention_rows is not None or spec.retention_days is not None:
                store.apply_retention()  # takes the write lock: only when there are limits
            rows = store.rows()
    except (StoreError, TicketError, sqlite3.Error) as error:
        raise LocalDataError(f"device readings unusable: {type(error).__name__}") from None
    if not rows:
        raise LocalDataError("no readings on this device yet (edge-daemon ingest)")
    return rows


def held_out_rows(count: int, spec: StoreSpec) -> npt.NDArray[np.bool_]:
    """bool [count]: the readings held out for local evaluation (every test_every-th)."""
    held_out: npt.NDArray[np.bool_] = np.arange(count) % spec.test_every == spec.test_every - 1
    return held_out


def readings_encoder(schema: str, preprocessing: Mapping[str, Any] | None) -> "HeartPreprocessor":
    """The encoder that turns a device's readings of `schema` into the ticket's features.

    LocalDataError when the schema has none, or the ticket carries no (valid) preprocessing.
    """
    from ticket.data.heart_encoding import HeartPreprocessor

    if schema != "heart-uci":
        raise LocalDataError(f"readings schema {schema!r} has no encoder")
    if preprocessing is None:
        raise LocalDataError("the ticket carries no preprocessing to encode device readings with")
    try:
        return HeartPreprocessor.from_json(preprocessing)
    except TicketError as error:
        raise LocalDataError(f"the ticket's preprocessing is unusable: {error}") from None


# One dataset per process: a Simulation Engine worker serves many virtual nodes of one run, and
# loading MNIST costs ~0.8 s a time. A real node's ClientApp process handles one message.
@functools.lru_cache(maxsize=1)
def _encoded_dataset(name: str, preprocessing: str | None) -> "Dataset":
    from ticket.data.encode import encode_with  # imports torch, as the dataset loaders do

    dataset = load_dataset(name)
    if preprocessing is not None:  # encode as the ticket expects, not as fitted locally
        dataset = encode_with(dataset, json.loads(preprocessing))
    return dataset


# The whole fleet's split, per process, like the dataset: partitioning MNIST's 60,000 rows
# 2,000 ways costs ~50 ms, paid once per worker instead of once per message of every virtual
# node. Keyed by the spec with partition-id 0, so every node of one split shares it.
@functools.lru_cache(maxsize=1)
def _fleet_split(
    fleet: LocalDataSpec, preprocessing: str | None
) -> tuple[list[IndexArray], list[IndexArray]]:
    dataset = _encoded_dataset(fleet.dataset, preprocessing)
    y_train = np.asarray(dataset.y_train, dtype=np.int64)
    y_test = np.asarray(dataset.y_test, dtype=np.int64)
    return _split(fleet, y_train, dataset.site_train), _split(fleet, y_test, dataset.site_test)


def _canonical(preprocessing: Mapping[str, Any] | None) -> str | None:
    return None if preprocessing is None else json.dumps(preprocessing, sort_keys=True)


def _split(
    spec: LocalDataSpec, labels: npt.NDArray[np.int64], sites: IndexArray
) -> list[IndexArray]:
    return partition(
        spec.partition,
        labels,
        num_clients=spec.num_partitions,
        seed=spec.seed,
        sites=sites,
        **dict(spec.options),
    )


def _text(config: Mapping[str, ConfigValue], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise LocalDataError(f"node config: {key} must be a non-empty string, got {value!r}")
    return value


def _whole(config: Mapping[str, ConfigValue], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LocalDataError(f"node config: {key} must be an integer, got {value!r}")
    return value


def _number(config: Mapping[str, ConfigValue], key: str) -> float | int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LocalDataError(f"node config: {key} must be a number, got {value!r}")
    return value
