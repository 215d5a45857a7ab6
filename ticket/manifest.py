"""The ticket manifest (schema version 1): required keys, their types, and measured density.

Extra keys are allowed and preserved; errors name the dotted key (`manifest.model.name`).
"""

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from ticket.errors import BundleError

MANIFEST_VERSION = 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_utc_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.utcoffset() == timedelta(0)


# (dotted key, check, what was expected); a key's parent always comes before it.
_SCHEMA: list[tuple[str, Callable[[Any], bool], str]] = [
    ("format_version", lambda v: _is_int(v) and v == MANIFEST_VERSION, str(MANIFEST_VERSION)),
    ("model", _is_object, "an object"),
    ("model.name", _is_str, "a string"),
    ("model.args", _is_object, "an object"),
    ("data", _is_object, "an object"),
    ("data.name", _is_str, "a string"),
    ("method", _is_object, "an object"),
    ("method.name", _is_str, "a string"),
    ("rewind_step", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("density", _is_object, "an object"),
    ("density.overall", _is_number, "a number"),
    (
        "density.layers",
        lambda v: _is_object(v) and all(_is_number(x) for x in v.values()),
        "an object mapping layer names to numbers",
    ),
    ("metrics", _is_object, "an object"),
    ("parent", lambda v: v is None or _is_str(v), "a string or null"),
    ("created_at", _is_utc_time, 'an ISO 8601 time in UTC, e.g. "2025-01-31T12:00:00Z"'),
]


def check_manifest(manifest: Any) -> None:
    """Raise BundleError naming the first required key that is missing or of the wrong type."""
    if not isinstance(manifest, dict):
        raise BundleError("manifest must be a JSON object")
    for dotted, is_valid, expected in _SCHEMA:
        *parents, key = dotted.split(".")
        container = manifest
        for parent in parents:
            container = container[parent]  # checked to be an object by an earlier row
        if key not in container:
            raise BundleError(f"manifest is missing the key {dotted!r}")
        value = container[key]
        if not is_valid(value):
            raise BundleError(f"manifest.{dotted}: expected {expected}, got {_show(value)}")


def measure_density(masks: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The manifest's `density` entry, computed exactly (integer counts, one division each)."""
    kept = {name: int(np.count_nonzero(mask)) for name, mask in masks.items()}
    total = sum(mask.size for mask in masks.values())
    return {
        "overall": sum(kept.values()) / total if total else 1.0,
        "layers": {n: kept[n] / masks[n].size if masks[n].size else 1.0 for n in masks},
    }


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
