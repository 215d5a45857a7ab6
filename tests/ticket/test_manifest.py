"""Manifest schema v1: exact JSON round trips, every required key named, density is exact."""

import copy
import json
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticket.errors import BundleError
from ticket.manifest import (
    COUNT,
    STRING,
    DataSpec,
    Density,
    Manifest,
    MethodSpec,
    ModelSpec,
    Section,
    measure_density,
    optional,
    required,
)
from ticket.tensorfile import canonical_json

GOLDEN_TICKET = Path(__file__).parent / "golden" / "tiny.ticket"


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


def _found_manifest() -> dict[str, Any]:
    """What `ticket find` writes (every typed field set), plus extra keys in every section."""
    return {
        "format_version": 1,
        "model": {"name": "heart-mlp", "args": {"hidden": [16, 8]}, "note": "x"},
        "data": {
            "name": "heart-uci",
            "sites": ["Cleveland"],
            "rows": {"train": 242, "test": 61},
            "rows_per_site": {"Cleveland": {"train": 242, "test": 61}},
            "num_features": 27,
            "num_classes": 2,
            "fingerprint": "ab" * 32,
            "preprocessing": {"kind": "heart", "means": [1.5, 2.0]},
            "licence": "CC-BY-4.0",
        },
        "method": {
            "name": "imp",
            "pruner": "magnitude-layerwise",
            "rates": {"rate": 0.2, "output_rate": None, "layer_rates": {}},
            "target_density": 0.2,
            "seed": 0,
            "train": {"epochs": 1, "lr": 0.001},
            "controls": ["reinit", "random"],
            "search_fingerprint": "cd" * 32,
            "schedule": [1, 2],
        },
        "rewind_step": 3,
        "density": {"overall": 1, "layers": {"fc1.weight": 1}, "unit": "fraction"},
        "metrics": {"final": {"accuracy": 0.75}, "levels": []},
        "parent": "ef" * 32,
        "created_at": "2025-01-31T12:00:00Z",
        "tool": {"name": "ticketfleet", "version": "0.1.0"},
        "notes": [{"a": None}],
    }


def _set(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    edited = copy.deepcopy(document)
    *parents, key = dotted.split(".")
    container = edited
    for parent in parents:
        container = container[parent]
    container[key] = value
    return edited


def _without(document: dict[str, Any], dotted: str) -> dict[str, Any]:
    edited = copy.deepcopy(document)
    *parents, key = dotted.split(".")
    container = edited
    for parent in parents:
        container = container[parent]
    del container[key]
    return edited


def _round_trips(document: dict[str, Any]) -> bool:
    """from_json then to_json gives back the same canonical bytes (1 and 1.0 differ there)."""
    return canonical_json(Manifest.from_json(document).to_json()) == canonical_json(document)


# ---------------------------------------------------------------- round trips


def test_a_complete_manifest_round_trips() -> None:
    assert _round_trips(_manifest())
    assert _round_trips(_found_manifest())


def test_fields_are_typed_and_unknown_keys_kept_as_extras() -> None:
    manifest = Manifest.from_json(_found_manifest())

    assert manifest.model == ModelSpec(
        name="heart-mlp", args={"hidden": [16, 8]}, extras={"note": "x"}
    )
    assert manifest.data.sites == ("Cleveland",)
    assert manifest.data.preprocessing == {"kind": "heart", "means": [1.5, 2.0]}
    assert manifest.data.extras == {"licence": "CC-BY-4.0"}
    assert manifest.method.controls == ("reinit", "random")
    assert manifest.method.extras == {"schedule": [1, 2]}
    assert manifest.density == Density(
        overall=1, layers={"fc1.weight": 1}, extras={"unit": "fraction"}
    )
    assert (manifest.rewind_step, manifest.parent) == (3, "ef" * 32)
    assert manifest.tool == {"name": "ticketfleet", "version": "0.1.0"}
    assert manifest.extras == {"notes": [{"a": None}]}


def test_an_integer_density_stays_an_integer() -> None:
    # 1 and 1.0 are different bytes, so a different content id.
    assert type(Manifest.from_json(_found_manifest()).density.overall) is int


def test_the_golden_manifest_round_trips_to_its_stored_bytes() -> None:
    body = GOLDEN_TICKET.read_bytes()[14:]
    (header_len,) = struct.unpack_from("<I", body)
    header_bytes = body[4 : 4 + header_len]
    header = json.loads(header_bytes)

    header["manifest"] = Manifest.from_json(header["manifest"]).to_json()

    assert canonical_json(header) == header_bytes


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("data.sites", "Cleveland"),
        ("data.sites", None),
        ("data.sites", ["Cleveland", 3]),
        ("data.preprocessing", None),
        ("data.preprocessing", "standard"),
        ("data.num_features", -1),
        ("data.num_classes", True),
        ("method.pruner", {"kind": "global"}),
        ("method.target_density", "0.2"),
        ("method.seed", 1.5),
        ("method.controls", "random"),
        ("tool", "ticketfleet 0.1"),
    ],
)
def test_an_optional_key_of_another_kind_is_kept_verbatim_as_an_extra(
    dotted: str, value: Any
) -> None:
    # Format 1 let these keys hold anything, so such a file must still read, byte for byte.
    document = _set(_found_manifest(), dotted, value)

    manifest = Manifest.from_json(document)

    *parents, key = dotted.split(".")
    section: Section = manifest
    for parent in parents:
        section = getattr(section, parent)
    assert getattr(section, key) is None
    assert section.extras[key] == value
    assert _round_trips(document)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_SECTIONS = ["", "model", "data", "method", "density"]
_OPTIONAL_KEYS = ["sites", "preprocessing", "num_features", "pruner", "seed", "controls", "tool"]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(_SECTIONS),
    st.sampled_from(_OPTIONAL_KEYS) | st.text(min_size=1, max_size=8),
    _JSON,
)
def test_any_value_under_any_non_required_key_round_trips(
    section: str, key: str, value: Any
) -> None:
    document = _manifest()
    container = document[section] if section else document
    if key in container:  # a required key: its type is checked, not tolerated
        return
    container[key] = value

    assert _round_trips(document)


def test_reading_copies_and_writing_copies() -> None:
    document = _found_manifest()
    manifest = Manifest.from_json(document)

    document["model"]["args"]["hidden"].append(4)
    written = manifest.to_json()
    written["metrics"]["final"]["accuracy"] = 0.0

    assert manifest.model.args == {"hidden": [16, 8]}
    assert manifest.metrics["final"] == {"accuracy": 0.75}


# ---------------------------------------------------------------- writers


def test_a_manifest_built_in_python_writes_only_the_fields_it_sets() -> None:
    manifest = Manifest(
        model=ModelSpec(name="heart-mlp", args={"in_features": 4}),
        data=DataSpec(name="heart-uci"),
        method=MethodSpec(name="imp"),
        rewind_step=0,
        density=Density(overall=0.5, layers={"fc1.weight": 0.5}),
        metrics={},
        parent=None,
        created_at="2025-01-31T12:00:00Z",
    )

    assert manifest.to_json() == _manifest()
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert replace(manifest, data=DataSpec(name="x", sites=("a",))).to_json()["data"] == {
        "name": "x",
        "sites": ["a"],
    }


@pytest.mark.parametrize(
    "make",
    [
        lambda: ModelSpec(name="m", args={}, extras={"name": "n"}),
        lambda: DataSpec(name="d", sites=("a",), extras={"sites": ["b"]}),
    ],
)
def test_an_extra_key_cannot_repeat_a_field(make: Any) -> None:
    with pytest.raises(BundleError, match="is a field, so it cannot be an extra key"):
        make()


def test_an_extra_may_hold_what_an_unset_optional_field_could_not_read() -> None:
    data = DataSpec(name="d", extras={"sites": "Cleveland"})

    assert data.to_json() == {"name": "d", "sites": "Cleveland"}


# ---------------------------------------------------------------- extending


@dataclass(frozen=True, kw_only=True)
class _FleetSearch(Section):
    run_id: Annotated[str, required(STRING)]
    rounds: Annotated[int | None, optional(COUNT)] = None


@dataclass(frozen=True, kw_only=True)
class _FleetMethod(MethodSpec):
    search: Annotated[_FleetSearch | None, optional(_FleetSearch)] = None


def test_an_optional_section_is_one_field() -> None:
    read = _FleetMethod.from_json({"name": "fedimp", "search": {"run_id": "r7", "rounds": 3}})
    broken = {"name": "fedimp", "search": {"rounds": 3}}  # no run_id: kept as it was

    assert read.search == _FleetSearch(run_id="r7", rounds=3)
    assert read.to_json() == {"name": "fedimp", "search": {"rounds": 3, "run_id": "r7"}}
    assert _FleetMethod.from_json(broken).search is None
    assert _FleetMethod.from_json(broken).to_json() == broken


# ---------------------------------------------------------------- errors


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


@pytest.mark.parametrize("dotted", REQUIRED)
def test_a_missing_key_is_named(dotted: str) -> None:
    with pytest.raises(BundleError, match=f"^manifest is missing the key '{dotted}'$"):
        Manifest.from_json(_without(_manifest(), dotted))


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("format_version", 2),
        ("format_version", "1"),
        ("format_version", True),
        ("model", "heart-mlp"),
        ("model.name", 3),
        ("model.args", []),
        ("data", None),
        ("data.name", None),
        ("method", []),
        ("method.name", {"name": "imp"}),
        ("rewind_step", -1),
        ("rewind_step", 1.0),
        ("density", 0.5),
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
    with pytest.raises(BundleError, match=f"^manifest.{dotted}: expected "):
        Manifest.from_json(_set(_manifest(), dotted, value))


def test_the_message_names_what_was_expected_and_what_was_found() -> None:
    with pytest.raises(BundleError, match=r"^manifest\.model\.name: expected a string, got 1$"):
        Manifest.from_json(_set(_manifest(), "model.name", 1))


@pytest.mark.parametrize("document", [[], "manifest", None])
def test_a_manifest_must_be_an_object(document: Any) -> None:
    with pytest.raises(BundleError, match=r"^manifest must be a JSON object$"):
        Manifest.from_json(document)


def test_a_section_read_on_its_own_names_its_key() -> None:
    with pytest.raises(BundleError, match=r"^manifest\.data: expected an object, got 1$"):
        DataSpec.from_json(1, at="data")
    with pytest.raises(BundleError, match=r"^manifest is missing the key 'data\.name'$"):
        DataSpec.from_json({}, at="data")


@pytest.mark.parametrize("created_at", ["2025-01-31T12:00:00Z", "2025-01-31T12:00:00.5+00:00"])
def test_utc_times_are_accepted(created_at: str) -> None:
    assert Manifest.from_json({**_manifest(), "created_at": created_at}).created_at == created_at


def test_a_parent_content_id_is_accepted() -> None:
    assert Manifest.from_json({**_manifest(), "parent": "ab" * 32}).parent == "ab" * 32


# ---------------------------------------------------------------- density


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
