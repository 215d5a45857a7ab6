"""heart-uci: the vendored CSV, its fixed split, the reading schema and the JSON-able encoder."""

import collections
import copy
import functools
import json
from importlib import resources
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ticket.data import Dataset, DatasetArgumentError, heart, load_dataset
from ticket.data.dataset import verify_sha256
from ticket.data.heart import (
    HEART_SCHEMA,
    HEART_SITES,
    HeartPreprocessor,
    PreprocessorFormatError,
    ReadingError,
    is_test_row,
    parse_reading,
    read_heart_rows,
)
from ticket.data.heart_encoding import CategoricalColumn, NumericColumn, NumericEncoding
from ticket.errors import DatasetUnavailableError, UnknownNameError

# Pinned: a change here means every heart ticket's data changed, which must be a conscious act.
SPLIT = {
    "Cleveland": {"train": 226, "test": 78},
    "Hungary": {"train": 208, "test": 85},
    "Switzerland": {"train": 75, "test": 48},
    "VA Long Beach": {"train": 134, "test": 66},
}
NUMERIC = [column.name for column in HEART_SCHEMA if isinstance(column, NumericColumn)]

Row = dict[str, str]


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return read_heart_rows()


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset("heart-uci")


def _train_test(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    test = [row for row in rows if is_test_row(row["dataset"], row["id"])]
    return [row for row in rows if not is_test_row(row["dataset"], row["id"])], test


def test_csv_holds_920_patients_from_four_hospitals(rows: list[Row]) -> None:
    sites = collections.Counter(row["dataset"] for row in rows)
    assert sites == {"Cleveland": 304, "Hungary": 293, "VA Long Beach": 200, "Switzerland": 123}
    assert set(sites) == set(HEART_SITES)


def test_split_counts_per_hospital_are_pinned(dataset: Dataset) -> None:
    described = dataset.describe()
    assert described["rows_per_site"] == SPLIT
    assert described["rows"] == {"train": 643, "test": 277}


def test_split_depends_only_on_site_and_id() -> None:
    # Golden values of the hash rule itself: the same id is split differently per hospital.
    assert [i for i in range(1, 21) if is_test_row("Cleveland", str(i))] == [4, 5, 9, 17, 19]
    assert [i for i in range(1, 21) if is_test_row("Hungary", str(i))] == [4, 5, 9, 17, 18]
    first, second = load_dataset("heart-uci"), load_dataset("heart-uci")
    assert torch.equal(first.x_test, second.x_test) and torch.equal(first.y_train, second.y_train)
    assert first.fingerprint == second.fingerprint


def test_site_filter_keeps_those_hospitals_in_canonical_order() -> None:
    data = load_dataset("heart-uci", sites=["VA Long Beach", "Cleveland"])
    assert data.site_names == ("Cleveland", "VA Long Beach")
    assert np.bincount(data.site_train).tolist() == [226, 134]
    assert np.bincount(data.site_test).tolist() == [78, 66]
    assert data.fingerprint != load_dataset("heart-uci").fingerprint
    assert (
        data.fingerprint
        == load_dataset("heart-uci", sites=["Cleveland", "VA Long Beach"]).fingerprint
    )


def test_unknown_site_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as caught:
        load_dataset("heart-uci", sites=["Cleveland", "Boston"])
    assert "'Boston'" in str(caught.value)
    assert all(site in str(caught.value) for site in HEART_SITES)


@pytest.mark.parametrize("sites", ["Cleveland", [], ["Hungary", "Hungary"]])
def test_malformed_site_lists_are_rejected(sites: Any) -> None:
    with pytest.raises(DatasetArgumentError, match="sites"):
        load_dataset("heart-uci", sites=sites)


def test_features_are_finite_named_and_exclude_site_and_id(dataset: Dataset) -> None:
    assert dataset.x_train.dtype == torch.float32 and dataset.y_train.dtype == torch.int64
    assert dataset.x_train.shape == (643, 35) and dataset.x_test.shape == (277, 35)
    assert len(dataset.feature_names) == 35 == len(set(dataset.feature_names))
    assert torch.isfinite(dataset.x_train).all() and torch.isfinite(dataset.x_test).all()
    names = " ".join(dataset.feature_names)
    assert "dataset" not in names and "id" not in dataset.feature_names
    assert not any(site in names for site in HEART_SITES)
    assert {"chol", "chol_missing", "cp=asymptomatic", "thal_missing"} <= set(dataset.feature_names)


def test_model_args_and_describe_are_json(dataset: Dataset) -> None:
    assert dataset.model_args() == {"in_features": 35, "num_classes": 2}
    described = json.loads(json.dumps(dataset.describe()))
    assert described["name"] == "heart-uci"
    assert described["sites"] == list(HEART_SITES)
    assert described["fingerprint"] == dataset.fingerprint
    assert described["preprocessing"] == dataset.preprocessing


def test_label_is_num_above_zero(dataset: Dataset, rows: list[Row]) -> None:
    train, _ = _train_test(rows)
    assert dataset.y_train.tolist() == [int(int(row["num"]) > 0) for row in train]
    assert set(dataset.y_test.tolist()) == {0, 1}


def test_numeric_features_are_standardised_on_train(dataset: Dataset) -> None:
    for name in NUMERIC:
        column = dataset.x_train[:, dataset.feature_names.index(name)].double()
        assert abs(column.mean().item()) < 1e-6
        assert column.std(correction=0).item() == pytest.approx(1.0, abs=1e-6)


def test_preprocessor_is_fitted_on_train_rows_only(
    dataset: Dataset, rows: list[Row], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, _ = _train_test(rows)
    assert dataset.preprocessing == HeartPreprocessor.fit(train).to_json()
    columns = [column.name for column in HEART_SCHEMA]
    chol = HeartPreprocessor.fit(train).encodings[columns.index("chol")]
    observed = [float(row["chol"]) for row in train if row["chol"] not in ("", "0")]
    assert isinstance(chol, NumericEncoding) and chol.median == float(np.median(observed))
    # Wildly different test rows change the test features but not the fitted statistics.
    perturbed = [
        {**row, "chol": "600", "age": "90", "thal": ""}
        if is_test_row(row["dataset"], row["id"])
        else row
        for row in rows
    ]
    monkeypatch.setattr(heart, "read_heart_rows", lambda: perturbed)
    changed = load_dataset("heart-uci")
    assert changed.preprocessing == dataset.preprocessing
    assert torch.equal(changed.x_train, dataset.x_train)
    assert not torch.equal(changed.x_test, dataset.x_test)


def test_zero_cholesterol_and_blood_pressure_mean_not_measured(rows: list[Row]) -> None:
    preprocessor = HeartPreprocessor.fit(rows)
    base = rows[0]
    as_zero = preprocessor.transform([{**base, "chol": "0", "trestbps": "0"}])
    as_empty = preprocessor.transform([{**base, "chol": "", "trestbps": ""}])
    assert np.array_equal(as_zero, as_empty)
    assert as_zero[0, preprocessor.feature_names.index("chol_missing")] == 1.0


def test_a_site_whose_cholesterol_is_never_recorded_still_encodes() -> None:
    data = load_dataset("heart-uci", sites=["Switzerland"])
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()
    chol_missing = data.x_train[:, data.feature_names.index("chol_missing")]
    assert torch.equal(chol_missing, torch.ones_like(chol_missing))


def test_json_round_trip_transforms_identically(dataset: Dataset, rows: list[Row]) -> None:
    train, _ = _train_test(rows)
    fitted = HeartPreprocessor.fit(train)
    restored = HeartPreprocessor.from_json(json.loads(json.dumps(dataset.preprocessing)))
    assert restored == fitted
    assert np.array_equal(restored.transform(rows), fitted.transform(rows))
    assert restored.feature_names == dataset.feature_names


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(("extra",), 1), "unknown keys"),
        (_delete(("target",)), "missing keys"),
        (_set(("version",), 2), "version"),
        (_set(("version",), True), "version"),
        (_set(("format",), "other"), "format"),
        (_set(("target", "positive_if_above"), 1), "target"),
        (_set(("columns",), []), "columns"),
        (_set(("columns", 0, "extra"), 1), r"columns\[age\]: unknown keys"),
        (_delete(("columns", 0, "median")), r"columns\[age\]: .*missing keys \['median'\]"),
        (_set(("columns", 0, "name"), "sex"), r"columns\[age\]"),
        (_set(("columns", 0, "kind"), "categorical"), r"columns\[age\]\.kind"),
        (_set(("columns", 0, "std"), 0.0), r"std"),
        (_set(("columns", 0, "mean"), "1.0"), r"mean"),
        (_set(("columns", 0, "median"), True), r"median"),
        (_set(("columns", 0, "missing_indicator"), 0), r"missing_indicator"),
        (_set(("columns", 1, "categories"), ["Male", "Female"]), r"columns\[sex\]\.categories"),
        (_set(("columns", 1, "categories"), ["Other"]), r"categories"),
        (_set(("columns", 1, "categories"), ["Male", "Male"]), r"categories"),
    ],
)
def test_from_json_is_strict(dataset: Dataset, mutate: Any, message: str) -> None:
    data = copy.deepcopy(dict(dataset.preprocessing))
    mutate(data)
    with pytest.raises(PreprocessorFormatError, match=message):
        HeartPreprocessor.from_json(data)


def _columns_of(preprocessor: HeartPreprocessor, column: str) -> list[int]:
    prefixes = (f"{column}=", f"{column}_missing")
    return [i for i, name in enumerate(preprocessor.feature_names) if name.startswith(prefixes)]


def test_unseen_category_and_unexpected_missing_encode_as_zeros(rows: list[Row]) -> None:
    train = [row for row in rows if row["thal"] != "fixed defect"]
    preprocessor = HeartPreprocessor.fit(train)
    thal = _columns_of(preprocessor, "thal")
    sex = _columns_of(preprocessor, "sex")
    encoded = preprocessor.transform([{**rows[0], "thal": "fixed defect", "sex": ""}])
    assert "thal=fixed defect" not in preprocessor.feature_names
    assert not encoded[0, thal].any() and not encoded[0, sex].any()


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("chol", "abc", "chol: expected a number"),
        ("chol", "20000", "chol: outside"),
        ("age", "45.5", "age: expected a whole number"),
        ("oldpeak", "nan", "oldpeak: expected a finite number"),
        ("cp", "ANGINA", "cp: not one of"),
        ("sex", True, "sex: not one of"),
        ("trestbps", True, "trestbps: expected a number"),
    ],
)
def test_invalid_readings_are_rejected_without_echoing_them(
    rows: list[Row], column: str, value: object, message: str
) -> None:
    with pytest.raises(ReadingError, match=f"row 0: {message}") as caught:
        parse_reading({**rows[0], column: value})
    assert str(value) not in str(caught.value)


def test_a_reading_without_a_column_is_rejected(rows: list[Row]) -> None:
    reading = {key: value for key, value in rows[0].items() if key != "thal"}
    with pytest.raises(ReadingError, match="no column 'thal'"):
        parse_reading(reading, index=7)


def test_schema_covers_every_vendored_reading(rows: list[Row]) -> None:
    assert [column.name for column in HEART_SCHEMA] == [
        name for name in rows[0] if name not in ("id", "dataset", "num")
    ]
    for index, row in enumerate(rows):
        parse_reading(row, index)


def test_checksum_mismatch_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heart, "HEART_CSV_SHA256", "0" * 64)
    with pytest.raises(DatasetUnavailableError, match=r"heart_disease_uci\.csv"):
        load_dataset("heart-uci")


def test_a_modified_copy_fails_its_checksum(rows: list[Row]) -> None:
    data = resources.files("ticket.data").joinpath("vendor").joinpath(heart.HEART_CSV).read_bytes()
    verify_sha256(data, heart.HEART_CSV_SHA256, "copy.csv")
    modified = data.replace(b"Cleveland", b"Clevelant", 1)
    with pytest.raises(DatasetUnavailableError, match=r"copy\.csv"):
        verify_sha256(modified, heart.HEART_CSV_SHA256, "copy.csv")


def _cell(column: NumericColumn | CategoricalColumn) -> st.SearchStrategy[str]:
    if isinstance(column, CategoricalColumn):
        return st.sampled_from(["", *column.categories])
    if column.is_integer:
        values = st.integers(int(column.minimum), int(column.maximum)).map(str)
    else:
        values = st.floats(column.minimum, column.maximum).map(repr)
    return st.one_of(st.just(""), values)


READINGS = st.fixed_dictionaries({column.name: _cell(column) for column in HEART_SCHEMA})


@given(st.lists(READINGS, min_size=1, max_size=20))
def test_any_valid_reading_encodes_to_finite_features(readings: list[Row]) -> None:
    preprocessor = HeartPreprocessor.from_json(_fitted_json())
    encoded = preprocessor.transform(readings)
    assert encoded.shape == (len(readings), len(preprocessor.feature_names))
    assert encoded.dtype == np.float32 and np.isfinite(encoded).all()


@functools.cache
def _fitted_json() -> dict[str, Any]:
    return HeartPreprocessor.fit(read_heart_rows()).to_json()


def test_first_train_rows_keeps_the_test_rows_and_names_the_subset(dataset: Dataset) -> None:
    subset = dataset.first_train_rows(100)

    assert torch.equal(subset.x_train, dataset.x_train[:100])
    assert torch.equal(subset.y_train, dataset.y_train[:100])
    assert list(subset.site_train) == list(dataset.site_train[:100])
    assert torch.equal(subset.x_test, dataset.x_test)
    assert subset.describe()["rows"] == {"train": 100, "test": len(dataset.y_test)}
    assert subset.fingerprint not in {dataset.fingerprint, dataset.first_train_rows(99).fingerprint}
    assert subset.preprocessing == dataset.preprocessing
    with pytest.raises(DatasetArgumentError, match="heart-uci has 643 training rows, asked for 0"):
        dataset.first_train_rows(0)
