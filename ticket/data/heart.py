"""UCI Heart Disease from four hospitals: the vendored CSV, its fixed split, and the loader.

Split: a row is a test row when `int(sha256(f"heart-uci:{site}:{id}"), 16) % 100 < 30`, so it
depends on no seed and no library version. The resulting train/test rows per hospital are
Cleveland 226/78, Hungary 208/85, Switzerland 75/48, VA Long Beach 134/66 (643/277 in all);
tests/ticket/test_data_heart.py pins these numbers.
"""

import csv
import hashlib
import io
from collections.abc import Sequence
from importlib import resources

import numpy as np
import numpy.typing as npt
import torch

from ticket.data.dataset import Dataset, fingerprint, select_sites, verify_sha256
from ticket.data.heart_encoding import (
    HEART_SCHEMA,
    HEART_TARGET,
    PREPROCESSING_VERSION,
    HeartPreprocessor,
    PreprocessorFormatError,
    RawRow,
    ReadingError,
    parse_reading,
)
from ticket.errors import DatasetUnavailableError

# The encoder lives in its own module; heart.py is the one place callers import heart data from.
__all__ = [
    "HEART_CSV",
    "HEART_CSV_SHA256",
    "HEART_SCHEMA",
    "HEART_SITES",
    "HEART_TARGET",
    "TEST_PERCENT",
    "HeartPreprocessor",
    "PreprocessorFormatError",
    "ReadingError",
    "is_test_row",
    "load_heart",
    "parse_reading",
    "read_heart_rows",
]

HEART_CSV = "heart_disease_uci.csv"
HEART_CSV_SHA256 = "574f2fa2b43012fa25fca4fcdb36bd7c6bccdd0af4242f6c0e4c8633c5a072ae"
HEART_SITES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")
TEST_PERCENT = 30


def read_heart_rows() -> list[dict[str, str]]:
    """The vendored CSV's 920 rows as strings (empty string = not recorded), checksum verified."""
    where = f"ticket/data/vendor/{HEART_CSV}"
    try:
        data = resources.files("ticket.data").joinpath("vendor").joinpath(HEART_CSV).read_bytes()
    except OSError as error:
        raise DatasetUnavailableError(f"{where}: cannot be read ({error.strerror})") from error
    verify_sha256(data, HEART_CSV_SHA256, where)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def is_test_row(site: str, row_id: str) -> bool:
    """The fixed split: a hash of the hospital and patient id, not a seeded shuffle."""
    digest = hashlib.sha256(f"heart-uci:{site}:{row_id}".encode()).hexdigest()
    return int(digest, 16) % 100 < TEST_PERCENT


def load_heart(sites: Sequence[str] | None = None) -> Dataset:
    """Heart-uci restricted to `sites` (all four hospitals for None), encoded by a preprocessor
    fitted on the selected training rows only."""
    chosen = select_sites("heart-uci", sites, HEART_SITES)
    train, test = _split_rows(chosen)
    preprocessor = HeartPreprocessor.fit(train)
    recipe = {
        "dataset": "heart-uci",
        "sources": {HEART_CSV: HEART_CSV_SHA256},
        "split": {
            "rule": "int(sha256('heart-uci:{site}:{id}'), 16) % 100 < test_percent",
            "test_percent": TEST_PERCENT,
        },
        "preprocessing_version": PREPROCESSING_VERSION,
        "sites": list(chosen),
    }
    return Dataset(
        name="heart-uci",
        x_train=torch.from_numpy(preprocessor.transform(train)),
        y_train=torch.from_numpy(preprocessor.labels(train)),
        x_test=torch.from_numpy(preprocessor.transform(test)),
        y_test=torch.from_numpy(preprocessor.labels(test)),
        site_train=_site_indices(train, chosen),
        site_test=_site_indices(test, chosen),
        site_names=chosen,
        num_classes=2,
        feature_names=preprocessor.feature_names,
        fingerprint=fingerprint(recipe),
        preprocessing=preprocessor.to_json(),
    )


def heart_training_rows(sites: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The raw training rows of `sites` (all four hospitals for None), in the order of
    `load_heart(sites)`'s x_train: what a dataset node counts for a federated encoding fit."""
    return _split_rows(select_sites("heart-uci", sites, HEART_SITES))[0]


def _split_rows(chosen: tuple[str, ...]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rows = [row for row in read_heart_rows() if row["dataset"] in chosen]
    train = [row for row in rows if not is_test_row(row["dataset"], row["id"])]
    test = [row for row in rows if is_test_row(row["dataset"], row["id"])]
    return train, test


def _site_indices(rows: Sequence[RawRow], sites: tuple[str, ...]) -> npt.NDArray[np.int64]:
    return np.array([sites.index(str(row["dataset"])) for row in rows], dtype=np.int64)
