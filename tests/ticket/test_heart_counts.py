"""The heart encoding fitted from summed counts equals the one fitted on the pooled rows."""

from collections.abc import Sequence

import numpy as np
import pytest

from ticket.data.heart import read_heart_rows
from ticket.data.heart_counts import COUNTS_LENGTH, SLOTS, encoding_counts, fit_counts
from ticket.data.heart_encoding import (
    HeartPreprocessor,
    NumericEncoding,
    RawRow,
    ReadingError,
)


def _assert_same_fit(got: HeartPreprocessor, expected: HeartPreprocessor) -> None:
    assert got.feature_names == expected.feature_names
    for mine, theirs in zip(got.encodings, expected.encodings, strict=True):
        if isinstance(theirs, NumericEncoding):
            assert isinstance(mine, NumericEncoding)
            assert (mine.column, mine.median) == (theirs.column, theirs.median)
            assert mine.has_missing_indicator == theirs.has_missing_indicator
            assert mine.mean == pytest.approx(theirs.mean, rel=1e-12, abs=1e-12)
            assert mine.std == pytest.approx(theirs.std, rel=1e-9)
        else:
            assert mine == theirs


def _sites() -> dict[str, list[RawRow]]:
    by_site: dict[str, list[RawRow]] = {}
    for row in read_heart_rows():
        by_site.setdefault(str(row["dataset"]), []).append(row)
    return by_site


def _first_site() -> list[RawRow]:
    return next(iter(_sites().values()))


def test_the_fleets_summed_counts_fit_the_pooled_rows_encoding() -> None:
    sites = _sites()
    assert len(sites) == 4
    pooled: Sequence[RawRow] = [row for rows in sites.values() for row in rows]
    summed = sum((encoding_counts(rows) for rows in sites.values()), np.zeros(COUNTS_LENGTH, int))

    _assert_same_fit(fit_counts(summed), HeartPreprocessor.fit(pooled))
    rows = np.array([summed[s.start : s.missing + 1].sum() for s in SLOTS])
    assert set(rows) == {len(pooled)}  # every column counts every row once


def test_one_site_alone_fits_as_its_rows_do() -> None:
    for rows in _sites().values():  # Switzerland: chol missing in every row; ca mostly missing
        _assert_same_fit(fit_counts(encoding_counts(rows)), HeartPreprocessor.fit(rows))


def test_a_median_between_two_values_and_a_constant_column() -> None:
    rows = _first_site()[:6]
    same = [{**row, "ca": "1"} for row in rows]  # one value: constant, std 1
    fitted = fit_counts(encoding_counts(same))
    _assert_same_fit(fitted, HeartPreprocessor.fit(same))
    years = (40, 41, 50, 60, 61, 70)
    ages = [{**row, "age": str(age)} for row, age in zip(rows, years, strict=True)]
    _assert_same_fit(fit_counts(encoding_counts(ages)), HeartPreprocessor.fit(ages))
    (age,) = [e for e in fit_counts(encoding_counts(ages)).encodings if e.column == "age"]
    assert isinstance(age, NumericEncoding) and age.median == 55.0


def test_a_reading_outside_the_schema_is_refused_by_row_and_column() -> None:
    row = {**_first_site()[0], "chol": "5000"}
    with pytest.raises(ReadingError, match=r"row 0.*chol"):
        encoding_counts([row])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c[:-1], f"expected {COUNTS_LENGTH} counts"),
        (lambda c: c.astype(float) + 0.5, "counts must be integers"),
        (lambda c: np.where(np.arange(c.size) == 0, -1, c), "counts must be >= 0"),
        (lambda c: np.where(np.arange(c.size) == 0, c + 1, c), "different numbers of rows"),
        (np.zeros_like, "zero readings"),
        (lambda c: np.full(c.shape, np.nan), "counts must be integers"),
    ],
)
def test_bad_counts_are_refused(mutate: object, message: str) -> None:
    counts = encoding_counts(_first_site()[:20])
    with pytest.raises(ReadingError, match=message):
        fit_counts(mutate(counts))  # type: ignore[operator]
