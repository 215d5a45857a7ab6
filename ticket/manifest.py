"""The ticket manifest (schema version 1) as typed, frozen dataclasses, and measured density.

Each JSON object of the manifest is a section: a dataclass whose fields are its known keys,
each annotated with how its JSON value is checked (`required(KIND)` or `optional(KIND)`), plus
`extras`, the keys it does not know, kept verbatim. `Manifest.from_json(doc).to_json()` gives
back the same JSON object, so the content id of a format-1 ticket never moves.

- A required key that is missing or of the wrong type raises BundleError naming the dotted key
  (`manifest.model.name: expected a string, got 1`).
- An optional key is read into its field when its value has the field's kind; otherwise it
  stays in `extras`, verbatim, and the field is None. Format 1 allowed any value under keys
  other than the required ones, so every file that decoded before still decodes, byte for byte.
  Writers build sections in Python, where the field types hold, so they never write such a value.
- A field that is None is not written; adding an optional key to a section is one line:
  `run_id: Annotated[str | None, optional(STRING)] = None`.
"""

import copy
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Self, TypeVar, get_type_hints

import numpy as np

from ticket.errors import BundleError

MANIFEST_VERSION = 1


# ---------------------------------------------------------------- kinds of JSON values


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


@dataclass(frozen=True)
class Kind:
    """What a key's JSON value must be, and how it maps to and from the field's value.

    Values are copied both ways, so a section never aliases the document it was read from or
    the one it writes. Numbers are kept as they are (an int stays an int): the bytes must not move.
    """

    expected: str  # for errors: "manifest.KEY: expected <this>, got ..."
    is_valid: Callable[[Any], bool]
    load: Callable[[Any], Any] = copy.deepcopy
    dump: Callable[[Any], Any] = copy.deepcopy


STRING = Kind("a string", _is_str)
INTEGER = Kind("an integer", _is_int)
COUNT = Kind("an integer >= 0", lambda v: _is_int(v) and v >= 0)
NUMBER = Kind("a number", _is_number)
OBJECT = Kind("an object", _is_object)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
STRINGS = Kind(
    "a list of strings",
    lambda v: isinstance(v, list) and all(_is_str(x) for x in v),
    load=tuple,
    dump=list,
)
_FORMAT = Kind(str(MANIFEST_VERSION), lambda v: _is_int(v) and v == MANIFEST_VERSION)
_LAYER_DENSITIES = Kind(
    "an object mapping layer names to numbers",
    lambda v: _is_object(v) and all(_is_number(x) for x in v.values()),
)
_CONTENT_ID_OR_NULL = Kind("a string or null", lambda v: v is None or _is_str(v))
_UTC_TIME = Kind('an ISO 8601 time in UTC, e.g. "2025-01-31T12:00:00Z"', _is_utc_time)


@dataclass(frozen=True)
class _Key:
    kind: "Kind | type[Section]"
    is_required: bool


def required(kind: "Kind | type[Section]") -> _Key:
    """A key every manifest has; its absence or a value of another kind is an error."""
    return _Key(kind, is_required=True)


def optional(kind: "Kind | type[Section]") -> _Key:
    """A key a manifest may have; the field must default to None (not written)."""
    return _Key(kind, is_required=False)


# ---------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class Section:
    """One JSON object of the manifest: typed known keys plus `extras`, the rest, verbatim."""

    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, key in _keys(type(self)):
            if name in self.extras and (key.is_required or getattr(self, name) is not None):
                raise BundleError(
                    f"{type(self).__name__}: {name!r} is a field, so it cannot be an extra key"
                )

    @classmethod
    def from_json(cls, document: Any, *, at: str = "") -> Self:
        """Read a JSON object; `at` is its dotted key in the manifest, for error messages."""
        if not _is_object(document) and not at:
            raise BundleError("manifest must be a JSON object")
        if not _is_object(document):
            raise BundleError(f"manifest.{at}: expected an object, got {_show(document)}")
        return _read(cls, document, at)

    def to_json(self) -> dict[str, Any]:
        """The JSON object, keys sorted (as a reader of the canonical bytes sees them)."""
        document = copy.deepcopy(dict(self.extras))
        for name, key in _keys(type(self)):
            value = getattr(self, name)
            if value is None and not key.is_required:
                continue
            document[name] = value.to_json() if isinstance(value, Section) else _dump(key, value)
        return dict(sorted(document.items()))


@dataclass(frozen=True, kw_only=True)
class ModelSpec(Section):
    name: Annotated[str, required(STRING)]  # a ticket.models registry name
    args: Annotated[Mapping[str, Any], required(OBJECT)]  # its arguments


@dataclass(frozen=True, kw_only=True)
class DataSpec(Section):
    """The data the ticket was found on (`ticket.data.Dataset.describe()`)."""

    name: Annotated[str, required(STRING)]
    sites: Annotated[tuple[str, ...] | None, optional(STRINGS)] = None
    rows: Annotated[Mapping[str, Any] | None, optional(OBJECT)] = None
    rows_per_site: Annotated[Mapping[str, Any] | None, optional(OBJECT)] = None
    num_features: Annotated[int | None, optional(COUNT)] = None
    num_classes: Annotated[int | None, optional(COUNT)] = None
    fingerprint: Annotated[str | None, optional(STRING)] = None
    # How features are encoded (ticket.data.heart_encoding): devices encode their readings so.
    preprocessing: Annotated[Mapping[str, Any] | None, optional(OBJECT)] = None


@dataclass(frozen=True, kw_only=True)
class MethodSpec(Section):
    """How the ticket was found: the method's name and its settings."""

    name: Annotated[str, required(STRING)]
    pruner: Annotated[str | None, optional(STRING)] = None
    rates: Annotated[Mapping[str, Any] | None, optional(OBJECT)] = None  # rate, output_rate, ...
    target_density: Annotated[float | None, optional(NUMBER)] = None
    seed: Annotated[int | None, optional(INTEGER)] = None
    train: Annotated[Mapping[str, Any] | None, optional(OBJECT)] = None  # ticket.train.TrainConfig
    controls: Annotated[tuple[str, ...] | None, optional(STRINGS)] = None
    search_fingerprint: Annotated[str | None, optional(STRING)] = None


@dataclass(frozen=True, kw_only=True)
class Density(Section):
    """Kept / total of the masks; must match them (measure_density computes it)."""

    overall: Annotated[float, required(NUMBER)]
    layers: Annotated[Mapping[str, float], required(_LAYER_DENSITIES)]  # masked parameter -> kept


@dataclass(frozen=True, kw_only=True)
class FleetSpec(Section):
    """Where a fleet search (`fleet-server find`) found the ticket: aggregates only, never a
    device's value. `rewind_step` of such a ticket counts federated rounds, not steps."""

    run_id: Annotated[str, required(STRING)]  # the search's run directory name
    devices: Annotated[int, required(COUNT)]  # distinct devices with an update averaged in
    rounds: Annotated[int, required(COUNT)]  # federated rounds the search spent
    levels: Annotated[int, required(COUNT)]  # pruning levels trained
    bytes_up: Annotated[int, required(COUNT)]  # over all devices and rounds
    bytes_down: Annotated[int, required(COUNT)]
    secagg: Annotated[bool, required(BOOL)]  # updates were securely aggregated
    dp_epsilon: Annotated[float | None, optional(NUMBER)] = None  # distributed DP's spend


@dataclass(frozen=True, kw_only=True)
class Manifest(Section):
    """What a ticket is and how it was found; the field order is the order keys are checked."""

    format_version: Annotated[int, required(_FORMAT)] = MANIFEST_VERSION
    model: Annotated[ModelSpec, required(ModelSpec)]
    data: Annotated[DataSpec, required(DataSpec)]
    method: Annotated[MethodSpec, required(MethodSpec)]
    rewind_step: Annotated[int, required(COUNT)]  # W_k are the weights after k iterations
    density: Annotated[Density, required(Density)]
    metrics: Annotated[Mapping[str, Any], required(OBJECT)]
    parent: Annotated[str | None, required(_CONTENT_ID_OR_NULL)]  # content id it derives from
    created_at: Annotated[str, required(_UTC_TIME)]  # ISO 8601, UTC
    tool: Annotated[Mapping[str, Any] | None, optional(OBJECT)] = None  # what wrote it
    fleet: Annotated[FleetSpec | None, optional(FleetSpec)] = None  # found by a fleet search


# ---------------------------------------------------------------- reading and writing

_S = TypeVar("_S", bound=Section)


def _keys(cls: type[Section]) -> Iterator[tuple[str, _Key]]:
    """(name, key) of every JSON key of a section, in declaration order."""
    for name, hint in get_type_hints(cls, include_extras=True).items():
        keys = [meta for meta in getattr(hint, "__metadata__", ()) if isinstance(meta, _Key)]
        if keys:
            yield name, keys[0]


def _read(cls: type[_S], document: Mapping[str, Any], at: str) -> _S:
    values: dict[str, Any] = {}
    extras = dict(document)  # what no field claims; copied below
    for name, key in _keys(cls):
        dotted = f"{at}.{name}" if at else name
        if name not in document:
            if key.is_required:
                raise BundleError(f"manifest is missing the key {dotted!r}")
            continue
        try:
            values[name] = _load(key, document[name], dotted)
        except BundleError:
            if key.is_required:
                raise
            continue  # format 1 left this key free-form: keep the value as an extra
        del extras[name]
    return cls(**values, extras=copy.deepcopy(extras))


def _load(key: _Key, value: Any, dotted: str) -> Any:
    if isinstance(key.kind, type):
        return key.kind.from_json(value, at=dotted)
    if not key.kind.is_valid(value):
        raise BundleError(f"manifest.{dotted}: expected {key.kind.expected}, got {_show(value)}")
    return key.kind.load(value)


def _dump(key: _Key, value: Any) -> Any:
    return copy.deepcopy(value) if isinstance(key.kind, type) else key.kind.dump(value)


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
