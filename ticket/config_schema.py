"""A YAML document (already parsed) checked against a tree of frozen dataclasses: the schema.

One loader for every program's configuration file (daemon.yaml, server.yaml): a field's type is
the key's type, a field with a default is optional, `field(metadata=...)` holds the rules
("ge", "gt", "le", "choices"). Unknown keys, wrong types and out-of-range values raise the
program's own error class naming the file and the dotted key. Relative paths resolve against
the directory of the file. Reading and YAML parsing stay with the caller: this module is pure.

YAML keeps the last of two equal keys in a mapping without a word, so a file that sets
`server.address` twice would run against whichever came last. `rejecting_duplicate_keys` turns
the caller's PyYAML loader class (yaml.SafeLoader) into one that refuses such a document, and
`read_document` reports it with the file, the dotted key and both lines. The class comes in as
an argument: this module imports no YAML library (tests/test_layering.py).
"""

import contextlib
import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any


class DuplicateKeyError(Exception):
    """A mapping in a document holds the same key twice."""

    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(f"{key}: duplicate key at line {line} (first at line {first_line})")
        self.key = key
        self.line = line
        self.first_line = first_line


def rejecting_duplicate_keys(loader: type[Any]) -> type[Any]:
    """A subclass of the PyYAML loader class `loader` whose documents raise DuplicateKeyError
    when a mapping repeats a key; use it as `yaml.load(text, Loader=...)`."""

    class UniqueKeyLoader(loader):  # type: ignore[misc]
        def construct_document(self, node: Any) -> Any:
            # The composed node tree still has every key and its line; construction would
            # drop all but the last of each.
            check_unique_keys(node)
            return super().construct_document(node)

    UniqueKeyLoader.__name__ = UniqueKeyLoader.__qualname__ = f"UniqueKey{loader.__name__}"
    return UniqueKeyLoader


def check_unique_keys(node: Any, key: str = "", seen: set[int] | None = None) -> None:
    """Walk a PyYAML node tree (`.id` "mapping"/"sequence"/"scalar", `.value`, `.start_mark`);
    DuplicateKeyError names the first repeated key by its dotted path."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias (*anchor) points back at a node already walked
        return
    seen.add(id(node))
    if node.id == "sequence":
        for index, item in enumerate(node.value):
            check_unique_keys(item, f"{key}[{index}]", seen)
    elif node.id == "mapping":
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.id != "scalar":  # a complex key has no dotted name; the schema rejects it
                check_unique_keys(value_node, key, seen)
                continue
            name, line = str(key_node.value), key_node.start_mark.line + 1
            if name in first_lines:
                raise DuplicateKeyError(_join(key, name), line, first_lines[name])
            first_lines[name] = line
            check_unique_keys(value_node, _join(key, name), seen)


class SchemaLoader:
    """Walks the YAML data alongside the dataclass schema, keeping the dotted key for errors.

    `parsed` maps a type that YAML holds as a string to a parser raising ValueError (the daemon's
    time windows); `error_type` is the program's ConfigError.
    """

    def __init__(
        self,
        source: str,
        base_dir: Path,
        *,
        error_type: type[Exception],
        parsed: typing.Mapping[type, typing.Callable[[str], object]] | None = None,
    ) -> None:
        self._source = source
        self._base_dir = base_dir
        self._error_type = error_type
        self._parsed = dict(parsed or {})

    def error(self, key: str, message: str) -> Exception:
        return self._error_type(
            f"{self._source}: {key}: {message}" if key else f"{self._source}: {message}"
        )

    def build(self, schema: Any, data: object, key: str) -> Any:
        if not isinstance(data, dict):
            raise self.error(key, f"must be a mapping of keys, got {show_value(data)}")
        fields = {spec.name: spec for spec in dataclasses.fields(schema)}
        for name in data:
            if name not in fields:
                known = ", ".join(fields)
                raise self.error(_join(key, str(name)), f"unknown key; expected one of: {known}")
        hints = typing.get_type_hints(schema)
        values = {}
        for name, spec in fields.items():
            if name in data:
                values[name] = self._value(hints[name], data[name], _join(key, name), spec.metadata)
            elif (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            ):
                raise self.error(_join(key, name), "required")
        return schema(**values)

    def _value(self, hint: Any, raw: object, key: str, rules: typing.Mapping[str, Any]) -> object:
        options = typing.get_args(hint)
        if typing.get_origin(hint) in (types.UnionType, typing.Union):  # X | None
            if raw is None:
                return None
            (hint,) = (option for option in options if option is not type(None))
            return self._value(hint, raw, key, rules)
        if typing.get_origin(hint) is tuple:  # tuple[X, ...]
            if not isinstance(raw, list):
                raise self.error(key, f"must be a list, got {show_value(raw)}")
            return tuple(
                self._value(options[0], item, f"{key}[{i}]", {}) for i, item in enumerate(raw)
            )
        if dataclasses.is_dataclass(hint) and hint not in self._parsed:  # TimeWindow is a string
            return self.build(hint, raw, key)
        return self._scalar(hint, raw, key, rules)

    def _scalar(self, hint: Any, raw: object, key: str, rules: typing.Mapping[str, Any]) -> object:
        if hint is bool:
            if not isinstance(raw, bool):
                raise self.error(key, f"must be true or false, got {show_value(raw)}")
            return raw
        if hint in (int, float):
            return self._number(hint, raw, key, rules)
        if not isinstance(raw, str) or not raw:
            raise self.error(key, f"must be a non-empty string, got {show_value(raw)}")
        choices = rules.get("choices")
        if choices is not None and raw not in choices:
            raise self.error(key, f"must be one of: {', '.join(choices)}; got {show_value(raw)}")
        if hint is Path:
            try:
                return self._base_dir / Path(raw).expanduser()  # an absolute raw path wins
            except RuntimeError:  # "~name/..." for a user this machine does not have
                raise self.error(
                    key, f"names no home directory here; got {show_value(raw)}"
                ) from None
        if hint is str:
            return raw
        try:
            return self._parsed[hint](raw)
        except ValueError as error:
            raise self.error(key, f"{error}; got {show_value(raw)}") from None

    def _number(self, hint: type, raw: object, key: str, rules: typing.Mapping[str, Any]) -> object:
        value = math.nan
        # bool is an int subclass, but YAML's true is not 1; 2.0 is not a whole number.
        is_typed = isinstance(raw, int) or (hint is float and isinstance(raw, float))
        if is_typed and not isinstance(raw, bool):
            # An integer beyond float's range stays NaN: it is outside every range here.
            with contextlib.suppress(OverflowError):
                value = float(typing.cast(float, raw))
        is_ok = (
            math.isfinite(value)
            and value >= rules.get("ge", -math.inf)
            and value > rules.get("gt", -math.inf)
            and value <= rules.get("le", math.inf)
        )
        if not is_ok:
            kind = "a whole number" if hint is int else "a number"
            raise self.error(key, f"must be {kind}{describe_bounds(rules)}, got {show_value(raw)}")
        return raw if hint is int else value


def describe_bounds(rules: typing.Mapping[str, Any]) -> str:
    """ " in [0, 1]", " >= 1", " <= 0.5" or "": the range rules ge/gt/le as text."""
    low = rules.get("ge", rules.get("gt"))
    high = rules.get("le")
    if low is not None and high is not None:
        return f" in {'[' if 'ge' in rules else '('}{low:g}, {high:g}]"
    if low is not None:
        return f" {'>=' if 'ge' in rules else '>'} {low:g}"
    return f" <= {high:g}" if high is not None else ""


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def show_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# A daemon.yaml or server.yaml is a few kilobytes; 1 MiB leaves room for long comments and still
# parses in well under a second (PyYAML's pure-Python loader reads about 1 MB/s), so a larger
# file is a mistake (a log or a model named by accident) and is refused before it is read.
MAX_CONFIG_BYTES = 1 << 20
# The schemas nest four levels deep; PyYAML composes nodes recursively, two or three frames a
# level, so 100,000 `[` would exhaust Python's stack (RecursionError). 50 is far above any real
# config and far below the recursion limit.
MAX_CONFIG_DEPTH = 50


def nesting_depth(text: str) -> int:
    """An upper bound on how deeply a YAML text nests collections, found without parsing it:
    block levels (indentation steps, `- ` markers) plus open flow brackets (`[`, `{`). Brackets in
    strings and comments count too: an overestimate only matters past MAX_CONFIG_DEPTH."""
    deepest = flow = 0
    indents: list[int] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if flow == 0 and stripped and not stripped.startswith("#"):
            indent = len(line) - len(stripped)
            while indents and indents[-1] >= indent:
                indents.pop()
            indents.append(indent)
        body = stripped
        dashes = 0
        while body.startswith("- ") or body == "-":
            dashes += 1
            body = body[2:].lstrip(" ")
        block = len(indents) + dashes
        for char in line:
            if char in "[{":
                flow += 1
                deepest = max(deepest, block + flow)
            elif char in "]}":
                flow = max(0, flow - 1)
        deepest = max(deepest, block)
    return deepest


def _read_bounded(path: Path, error_type: type[Exception]) -> str:
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_CONFIG_BYTES:  # refused before a byte is read
                raise error_type(
                    f"{path}: {size} bytes is over the {MAX_CONFIG_BYTES}-byte limit for a config"
                )
            data = stream.read(MAX_CONFIG_BYTES + 1)  # a pipe or /proc file has no size to stat
    except FileNotFoundError:
        raise error_type(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error_type(f"{path}: is a directory, not a file") from None
    except OSError as error:
        raise error_type(f"{path}: cannot read: {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise error_type(f"{path}: over the {MAX_CONFIG_BYTES}-byte limit for a config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error_type(f"{path}: not UTF-8 text") from None


def read_document(
    path: Path,
    *,
    parse: typing.Callable[[str], Any],
    parse_error: type[Exception],
    error_type: type[Exception],
) -> Any:
    """A config file's parsed document (`parse` is e.g. yaml.safe_load: ticket/ imports no YAML
    library itself); a missing, unreadable, oversized (MAX_CONFIG_BYTES), too deeply nested
    (MAX_CONFIG_DEPTH) or unparsable file, or one whose `parse` raises DuplicateKeyError (see
    `rejecting_duplicate_keys`), raises `error_type` naming it."""
    text = _read_bounded(path, error_type)
    depth = nesting_depth(text)
    if depth > MAX_CONFIG_DEPTH:
        raise error_type(
            f"{path}: nested {depth} levels deep; a config may nest at most {MAX_CONFIG_DEPTH}"
        )
    try:
        return parse(text)
    except DuplicateKeyError as error:
        raise error_type(f"{path}: {error}") from None
    except RecursionError:  # a nesting the scan above did not see: still a clean refusal
        raise error_type(f"{path}: nested too deeply to parse") from None
    except parse_error as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "cannot parse"
        raise error_type(f"{path}: invalid YAML{where}: {problem}") from None
