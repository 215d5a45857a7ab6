"""The heart encoding from counts: what a device would send for a federated fit of the encoder,
and the fit from the fleet's summed counts (docs/fleet-search.md, "What a federated fit of the
encoding would take").

`HeartPreprocessor.fit` needs, per column, only statistics that follow from counts: for a
numeric column its median, mean and deviation after imputing the median, whether any value is
missing and whether the column is constant; for a categorical column which categories occur and
whether any value is missing. So a device sends, once, one vector of non-negative integers:

- per numeric column, a histogram over the schema's range in bins of the column's resolution
  (1 for the integer columns, 0.1 for oldpeak), then its count of missing values;
- per categorical column, the count of each schema category, then its count of missing values.

Counts add, so secure aggregation can sum them and the server learns the fleet's histogram and
nothing per device. `fit_counts` of the summed vector equals `HeartPreprocessor.fit` of the
pooled rows: exactly for the integer columns (a bin holds the value itself), and for oldpeak
whenever readings are recorded to 0.1, as every UCI reading is.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ticket.data.heart_encoding import (
    HEART_SCHEMA,
    CategoricalColumn,
    CategoricalEncoding,
    HeartPreprocessor,
    NumericColumn,
    NumericEncoding,
    RawRow,
    ReadingError,
    parse_reading,
)

Counts = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Slots:
    """Where one column's counts sit in the vector: [start, start + bins) then missing."""

    column: NumericColumn | CategoricalColumn
    start: int
    bins: int
    step: float  # a numeric bin's width; 0 for a categorical column

    @property
    def missing(self) -> int:
        return self.start + self.bins

    def value(self, index: int) -> float:
        """The reading a numeric bin stands for."""
        assert isinstance(self.column, NumericColumn)
        return round(self.column.minimum + index * self.step, 6)


def _layout() -> tuple[tuple[_Slots, ...], int]:
    slots, start = [], 0
    for column in HEART_SCHEMA:
        if isinstance(column, CategoricalColumn):
            bins, step = len(column.categories), 0.0
        else:
            step = 1.0 if column.is_integer else 0.1
            bins = round((column.maximum - column.minimum) / step) + 1
        slots.append(_Slots(column, start, bins, step))
        start += bins + 1
    return tuple(slots), start


SLOTS, COUNTS_LENGTH = _layout()


def encoding_counts(rows: Sequence[RawRow]) -> Counts:
    """int64 [COUNTS_LENGTH]: this device's histogram of its readings (module docstring).
    ReadingError, naming the row and column, for a reading outside the schema."""
    counts = np.zeros(COUNTS_LENGTH, np.int64)
    for index, row in enumerate(rows):
        parsed = parse_reading(row, index)
        for slot in SLOTS:
            cell = parsed[slot.column.name]
            if cell is None:
                counts[slot.missing] += 1
            elif isinstance(slot.column, CategoricalColumn):
                counts[slot.start + slot.column.categories.index(str(cell))] += 1
            else:
                assert isinstance(cell, float)
                counts[slot.start + round((cell - slot.column.minimum) / slot.step)] += 1
    return counts


def fit_counts(counts: npt.ArrayLike) -> HeartPreprocessor:
    """The encoder `HeartPreprocessor.fit` would fit on the rows these counts were made from;
    ReadingError for a vector of the wrong length, negative or non-integer counts, columns that
    disagree on the number of rows, or no rows."""
    raw = np.asarray(counts)
    if raw.shape != (COUNTS_LENGTH,):
        raise ReadingError(f"expected {COUNTS_LENGTH} counts, got shape {list(raw.shape)}")
    is_integral = np.issubdtype(raw.dtype, np.integer) or (
        np.all(np.isfinite(raw)) and np.array_equal(raw, np.round(raw))
    )
    if not is_integral:
        raise ReadingError("counts must be integers")
    values = raw.astype(np.int64)
    if (values < 0).any():
        raise ReadingError("counts must be >= 0")
    totals = {int(values[s.start : s.missing + 1].sum()) for s in SLOTS}
    if len(totals) != 1:
        raise ReadingError(f"the columns count different numbers of rows: {sorted(totals)}")
    (rows,) = totals
    if rows == 0:
        raise ReadingError("cannot fit a heart preprocessor on zero readings")
    return HeartPreprocessor(tuple(_fit(slot, values) for slot in SLOTS))


def _fit(slot: _Slots, values: Counts) -> NumericEncoding | CategoricalEncoding:
    bins = values[slot.start : slot.missing]  # [bins]
    missing = int(values[slot.missing])
    column = slot.column
    if isinstance(column, CategoricalColumn):
        seen = tuple(c for c, n in zip(column.categories, bins, strict=True) if n > 0)
        return CategoricalEncoding(column.name, seen, missing > 0)
    present = int(bins.sum())
    occupied = np.flatnonzero(bins)  # [distinct values]
    points = np.array([slot.value(int(i)) for i in occupied], np.float64)
    weights = bins[occupied].astype(np.float64)
    median = _median(points, bins[occupied], present) if present else 0.0
    n = present + missing
    mean = (float(points @ weights) + missing * median) / n
    second = (float((points * points) @ weights) + missing * median * median) / n
    # Constant (numpy's ptp of the imputed column is 0): at most one distinct value, since the
    # imputed median of one distinct value is that value.
    std = math.sqrt(max(second - mean * mean, 0.0)) if occupied.size > 1 else 1.0
    return NumericEncoding(column.name, median, mean, std, missing > 0)


def _median(points: npt.NDArray[np.float64], counts: Counts, total: int) -> float:
    """numpy's median of the values the histogram holds: the mean of the two middle ones."""
    ends = np.cumsum(counts)  # [distinct]: the rank just after each value's last copy
    low = points[int(np.searchsorted(ends, (total - 1) // 2, side="right"))]
    high = points[int(np.searchsorted(ends, total // 2, side="right"))]
    return float((low + high) / 2)
