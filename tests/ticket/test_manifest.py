"""Manifest schema v1: every required key is named when missing or mistyped; density is exact."""

import copy
from typing import Any

import numpy as np
import pytest

from ticket.errors import BundleError
from ticket.manifest import check_manifest, measure_density


def _manifest() -> dict[str, Any]:
    return {
        "format_version": 1,
        "model": {"name": "heart-mlp", "args": {"in_features": 4}},
        "data": {"name": "heart-uci"},
        "method": {"name": "imp"},
        "rewind_step": 0,
        "density": {"overall": 0.5, "layers": {"fc1.weight": 0.5}},
        "metrics": {},
        "parent": None,
        "created_at": "2025-01-31T12:00:00Z",
    }


REQUIRED = [
    "format_version",
    "model",
    "model.name",
    "model.args",
    "data",
    "data.name",
    "method",
    "method.name",
    "rewind_step",
    "density",
    "density.overall",
    "density.layers",
    "metrics",
    "parent",
    "created_at",
]


def _without(manifest: dict[str, Any], dotted: str) -> dict[str, Any]:
    edited = copy.deepcopy(manifest)
    *parents, key = dotted.split(".")
    container = edited
    for parent in parents:
        container = container[parent]
    del container[key]
    return edited


def test_a_complete_manifest_passes() -> None:
    check_manifest(_manifest())


def test_extra_keys_are_allowed() -> None:
    check_manifest({**_manifest(), "tool": {"name": "ticketfleet"}, "notes": "x"})


@pytest.mark.parametrize("dotted", REQUIRED)
def test_a_missing_key_is_named(dotted: str) -> None:
    with pytest.raises(BundleError, match=f"missing the key '{dotted}'"):
        check_manifest(_without(_manifest(), dotted))


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("format_version", 2),
        ("format_version", "1"),
        ("format_version", True),
        ("model", "heart-mlp"),
        ("model.name", 3),
        ("model.args", []),
        ("data.name", None),
        ("method.name", {"name": "imp"}),
        ("rewind_step", -1),
        ("rewind_step", 1.0),
        ("density.overall", "0.5"),
        ("density.overall", True),
        ("density.layers", {"fc1.weight": None}),
        ("metrics", []),
        ("parent", 7),
        ("created_at", "yesterday"),
        ("created_at", "2025-01-31T12:00:00"),  # no time zone
        ("created_at", "2025-01-31T12:00:00+02:00"),  # not UTC
        ("created_at", 1738324800),
    ],
)
def test_a_mistyped_key_is_named(dotted: str, value: Any) -> None:
    manifest = _manifest()
    *parents, key = dotted.split(".")
    container = manifest
    for parent in parents:
        container = container[parent]
    container[key] = value

    with pytest.raises(BundleError, match=f"^manifest.{dotted}: expected "):
        check_manifest(manifest)


@pytest.mark.parametrize("created_at", ["2025-01-31T12:00:00Z", "2025-01-31T12:00:00.5+00:00"])
def test_utc_times_are_accepted(created_at: str) -> None:
    check_manifest({**_manifest(), "created_at": created_at})


def test_a_parent_content_id_is_accepted() -> None:
    check_manifest({**_manifest(), "parent": "ab" * 32})


def test_measure_density_counts_exactly() -> None:
    masks = {
        "fc1.weight": np.arange(266_200) < 26_620,  # float32 arithmetic would be 1.5e-9 off
        "fc2.weight": np.zeros((0, 3), dtype=bool),
        "fc3.weight": np.array([[True, False], [False, False]]),
    }

    measured = measure_density(masks)

    assert measured == {
        "overall": 26_621 / 266_204,
        "layers": {"fc1.weight": 0.1, "fc2.weight": 1.0, "fc3.weight": 0.25},
    }
