"""Heart readings: the raw row schema a device validates against, and the JSON-able encoder.

The same `HeartPreprocessor`, fitted once on training rows and carried in a ticket's manifest as
JSON, turns a device's own raw readings into exactly the features the ticket was found on.

Encoding rules (version 1; a change here is a new `PREPROCESSING_VERSION`):
- Numeric columns: missing -> the training median, plus a 0/1 `<column>_missing` feature when
  the column had missing values in training; then (x - mean) / std with mean and std of the
  imputed training column (a constant column gets std 1). A column missing in every training
  row is imputed with 0.
- Categorical columns: one-hot over the schema categories seen in training, in schema order,
  plus a `<column>_missing` feature when the column had missing values in training. A category
  the schema allows but training never saw, or a missing value when training had none, encodes
  as all zeros: the model has no weight that could use it.
- `chol == 0` and `trestbps == 0` mean "not measured": the Switzerland hospital recorded every
  cholesterol as 0 (and VA Long Beach 49 of them), and a living patient has neither a serum
  cholesterol nor a resting blood pressure of 0, so treating 0 as a reading would teach the
  model that "Switzerland" predicts disease.
- Label: `num` (diagnosis grade 0-4) > 0.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ticket.errors import TicketError

PREPROCESSING_VERSION = 1
_FORMAT = "ticketfleet/heart-uci-preprocessor"

# One raw reading: column name -> the value as read from a CSV (str; "" or None = not recorded).
RawRow = Mapping[str, object]
_Value = float | str | None  # a parsed cell; None = not recorded


class ReadingError(TicketError, ValueError):
    """A raw reading does not fit `HEART_SCHEMA` (the message never repeats the value)."""


class PreprocessorFormatError(TicketError, ValueError):
    """A preprocessor's JSON is not exactly what this version writes."""


@dataclass(frozen=True)
class NumericColumn:
    name: str
    unit: str
    minimum: float
    maximum: float
    is_integer: bool
    missing_codes: tuple[float, ...] = ()  # recorded values that mean "not measured"


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    categories: tuple[str, ...]


Column = NumericColumn | CategoricalColumn

# The 13 clinical readings, in the CSV's order. Ranges are physiological bounds that hold every
# recorded value, wide enough for a device's real readings and narrow enough to catch unit slips.
HEART_SCHEMA: tuple[Column, ...] = (
    NumericColumn("age", "years", 0, 120, is_integer=True),
    CategoricalColumn("sex", ("Female", "Male")),
    CategoricalColumn("cp", ("typical angina", "atypical angina", "non-anginal", "asymptomatic")),
    NumericColumn("trestbps", "mm Hg", 40, 300, is_integer=True, missing_codes=(0,)),
    NumericColumn("chol", "mg/dl", 50, 1000, is_integer=True, missing_codes=(0,)),
    CategoricalColumn("fbs", ("FALSE", "TRUE")),
    CategoricalColumn("restecg", ("normal", "st-t abnormality", "lv hypertrophy")),
    NumericColumn("thalch", "beats/min", 30, 250, is_integer=True),
    CategoricalColumn("exang", ("FALSE", "TRUE")),
    NumericColumn("oldpeak", "mm ST depression", -5, 10, is_integer=False),
    CategoricalColumn("slope", ("upsloping", "flat", "downsloping")),
    NumericColumn("ca", "vessels", 0, 3, is_integer=True),
    CategoricalColumn("thal", ("normal", "fixed defect", "reversable defect")),
)
HEART_TARGET = NumericColumn("num", "diagnosis grade", 0, 4, is_integer=True)
_TARGET_JSON = {"column": "num", "positive_if_above": 0}


def describe_schema() -> dict[str, Any]:
    """The raw readings' columns as JSON: what a device's CSV must hold (`edge-daemon schema`)."""

    def column_json(column: Column) -> dict[str, Any]:
        if isinstance(column, CategoricalColumn):
            return {"name": column.name, "type": "category", "values": list(column.categories)}
        return {
            "name": column.name,
            "type": "integer" if column.is_integer else "number",
            "unit": column.unit,
            "minimum": column.minimum,
            "maximum": column.maximum,
            "means_not_recorded": list(column.missing_codes),
        }

    return {
        "columns": [column_json(column) for column in HEART_SCHEMA],
        "label": {
            **column_json(HEART_TARGET),
            "classes": {"0": "no heart disease (num = 0)", "1": "heart disease (num > 0)"},
        },
        "empty_cell": "not recorded (allowed in every column; an empty label: unlabelled)",
    }


def parse_cell(column: Column, raw: object) -> _Value:
    """One cell of a raw reading -> a float, a category, or None (not recorded)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(column, CategoricalColumn):
        if not isinstance(raw, str) or raw.strip() not in column.categories:
            raise ReadingError(f"{column.name}: not one of {', '.join(column.categories)}")
        return raw.strip()
    return _parse_number(column, raw)


def _parse_number(column: NumericColumn, raw: object) -> float | None:
    # bool is an int subclass; True as a cholesterol reading is a bug upstream, not 1 mg/dl.
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ReadingError(f"{column.name}: expected a number")
    try:
        value = float(raw)
    except ValueError:
        raise ReadingError(f"{column.name}: expected a number") from None
    if not math.isfinite(value):
        raise ReadingError(f"{column.name}: expected a finite number")
    if value in column.missing_codes:
        return None
    if column.is_integer and not value.is_integer():
        raise ReadingError(f"{column.name}: expected a whole number")
    if not column.minimum <= value <= column.maximum:
        raise ReadingError(
            f"{column.name}: outside {column.minimum:g}..{column.maximum:g} {column.unit}"
        )
    return value


def parse_reading(row: RawRow, index: int = 0) -> dict[str, _Value]:
    """Validate one raw reading against `HEART_SCHEMA`; extra keys (id, site, time) are ignored."""
    parsed: dict[str, _Value] = {}
    for column in HEART_SCHEMA:
        if column.name not in row:
            raise ReadingError(f"row {index}: no column {column.name!r}")
        try:
            parsed[column.name] = parse_cell(column, row[column.name])
        except ReadingError as error:
            raise ReadingError(f"row {index}: {error}") from None
    return parsed


def _table(rows: Sequence[RawRow]) -> dict[str, list[_Value]]:
    parsed = [parse_reading(row, index) for index, row in enumerate(rows)]
    return {column.name: [row[column.name] for row in parsed] for column in HEART_SCHEMA}


@dataclass(frozen=True)
class NumericEncoding:
    column: str
    median: float
    mean: float
    std: float
    has_missing_indicator: bool

    def feature_names(self) -> list[str]:
        return [self.column] + ([f"{self.column}_missing"] if self.has_missing_indicator else [])

    def encode(self, cells: Sequence[_Value]) -> npt.NDArray[np.float64]:  # [rows, 1 or 2]
        is_missing = np.array([cell is None for cell in cells], dtype=np.float64)
        filled = np.array([self.median if cell is None else cell for cell in cells], np.float64)
        blocks = [(filled - self.mean) / self.std]
        if self.has_missing_indicator:
            blocks.append(is_missing)
        return np.stack(blocks, axis=1).reshape(len(cells), len(blocks))


@dataclass(frozen=True)
class CategoricalEncoding:
    column: str
    categories: tuple[str, ...]
    has_missing_category: bool

    def feature_names(self) -> list[str]:
        names = [f"{self.column}={category}" for category in self.categories]
        return names + ([f"{self.column}_missing"] if self.has_missing_category else [])

    def encode(self, cells: Sequence[_Value]) -> npt.NDArray[np.float64]:  # [rows, width]
        slots = [*self.categories, *([None] if self.has_missing_category else [])]
        out = np.zeros((len(cells), len(slots)), dtype=np.float64)
        for row, cell in enumerate(cells):
            if cell in slots:  # an unseen category or unexpected missing stays all zeros
                out[row, slots.index(cell)] = 1.0
        return out


Encoding = NumericEncoding | CategoricalEncoding


def _fit_numeric(name: str, cells: list[_Value]) -> NumericEncoding:
    present = np.array([cell for cell in cells if cell is not None], dtype=np.float64)
    median = float(np.median(present)) if present.size else 0.0
    filled = np.array([median if cell is None else cell for cell in cells], dtype=np.float64)
    # Exact test for a constant column: a tiny float std would blow its values up instead.
    std = float(filled.std()) if np.ptp(filled) > 0 else 1.0
    return NumericEncoding(name, median, float(filled.mean()), std, present.size < len(cells))


def _fit_categorical(column: CategoricalColumn, cells: list[_Value]) -> CategoricalEncoding:
    seen = tuple(category for category in column.categories if category in cells)
    return CategoricalEncoding(column.name, seen, None in cells)


@dataclass(frozen=True)
class HeartPreprocessor:
    """Fitted encoding of every `HEART_SCHEMA` column, in schema order."""

    encodings: tuple[Encoding, ...]

    @classmethod
    def fit(cls, rows: Sequence[RawRow]) -> "HeartPreprocessor":
        """Fit on training rows only, so no test statistic leaks into the features."""
        if not rows:
            raise ReadingError("cannot fit a heart preprocessor on zero readings")
        table = _table(rows)
        return cls(
            tuple(
                _fit_categorical(column, table[column.name])
                if isinstance(column, CategoricalColumn)
                else _fit_numeric(column.name, table[column.name])
                for column in HEART_SCHEMA
            )
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for encoding in self.encodings for name in encoding.feature_names())

    def transform(self, rows: Sequence[RawRow]) -> npt.NDArray[np.float32]:  # [rows, features]
        table = _table(rows)
        blocks = [encoding.encode(table[encoding.column]) for encoding in self.encodings]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def labels(self, rows: Sequence[RawRow]) -> npt.NDArray[np.int64]:  # [rows]
        """1 = heart disease (`num` > 0), 0 = none."""
        grades = []
        for index, row in enumerate(rows):
            try:
                grade = _parse_number(HEART_TARGET, row.get(HEART_TARGET.name))
            except ReadingError as error:
                raise ReadingError(f"row {index}: {error}") from None
            if grade is None:
                raise ReadingError(f"row {index}: {HEART_TARGET.name}: not recorded")
            grades.append(grade)
        return (np.array(grades, dtype=np.float64) > 0).astype(np.int64)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": PREPROCESSING_VERSION,
            "columns": [_encoding_to_json(encoding) for encoding in self.encodings],
            "target": dict(_TARGET_JSON),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "HeartPreprocessor":
        """Strict inverse of `to_json`: any unknown, missing or ill-typed key raises."""
        _expect_keys(data, {"format", "version", "columns", "target"}, "preprocessor")
        version = data["version"]
        is_version = type(version) is int and version == PREPROCESSING_VERSION  # JSON true != 1
        if data["format"] != _FORMAT or not is_version:
            raise PreprocessorFormatError(
                f"preprocessor: expected format {_FORMAT!r} version {PREPROCESSING_VERSION}, "
                f"got {data['format']!r} version {version!r}"
            )
        if data["target"] != _TARGET_JSON:
            raise PreprocessorFormatError(f"preprocessor.target: expected {_TARGET_JSON}")
        columns = data["columns"]
        if not isinstance(columns, list) or len(columns) != len(HEART_SCHEMA):
            raise PreprocessorFormatError(
                f"preprocessor.columns: expected a list of {len(HEART_SCHEMA)} columns"
            )
        return cls(
            tuple(_encoding_from_json(c, col) for c, col in zip(HEART_SCHEMA, columns, strict=True))
        )


def _encoding_to_json(encoding: Encoding) -> dict[str, Any]:
    if isinstance(encoding, NumericEncoding):
        return {
            "name": encoding.column,
            "kind": "numeric",
            "median": encoding.median,
            "mean": encoding.mean,
            "std": encoding.std,
            "missing_indicator": encoding.has_missing_indicator,
        }
    return {
        "name": encoding.column,
        "kind": "categorical",
        "categories": list(encoding.categories),
        "missing_category": encoding.has_missing_category,
    }


def _encoding_from_json(column: Column, data: object) -> Encoding:
    where = f"preprocessor.columns[{column.name}]"
    if not isinstance(data, Mapping) or data.get("name") != column.name:
        raise PreprocessorFormatError(f"{where}: expected an object named {column.name!r}")
    if isinstance(column, NumericColumn):
        keys = {"name", "kind", "median", "mean", "std", "missing_indicator"}
        _expect_keys(data, keys, where)
        _expect_equal(data["kind"], "numeric", f"{where}.kind")
        std = _expect_number(data["std"], f"{where}.std")
        if std <= 0:
            raise PreprocessorFormatError(f"{where}.std: expected a positive number")
        return NumericEncoding(
            column.name,
            _expect_number(data["median"], f"{where}.median"),
            _expect_number(data["mean"], f"{where}.mean"),
            std,
            _expect_bool(data["missing_indicator"], f"{where}.missing_indicator"),
        )
    _expect_keys(data, {"name", "kind", "categories", "missing_category"}, where)
    _expect_equal(data["kind"], "categorical", f"{where}.kind")
    categories = data["categories"]
    # Categories must be a subset of the schema's, in schema order: one JSON per preprocessor.
    canonical = [c for c in column.categories if isinstance(categories, list) and c in categories]
    if not isinstance(categories, list) or categories != canonical:
        raise PreprocessorFormatError(
            f"{where}.categories: expected distinct values from {list(column.categories)} "
            "in that order"
        )
    return CategoricalEncoding(
        column.name,
        tuple(canonical),
        _expect_bool(data["missing_category"], f"{where}.missing_category"),
    )


def _expect_keys(data: Mapping[str, Any], expected: set[str], where: str) -> None:
    unknown, missing = sorted(set(data) - expected), sorted(expected - set(data))
    if unknown or missing:
        raise PreprocessorFormatError(f"{where}: unknown keys {unknown}, missing keys {missing}")


def _expect_equal(value: object, expected: object, where: str) -> None:
    if value != expected:
        raise PreprocessorFormatError(f"{where}: expected {expected!r}, got {value!r}")


def _expect_number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PreprocessorFormatError(f"{where}: expected a finite number")
    return float(value)


def _expect_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise PreprocessorFormatError(f"{where}: expected true or false")
    return value
