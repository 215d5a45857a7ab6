"""read_document's limits: size and nesting are refused with the file named, before parsing."""

import json
import sys
from pathlib import Path

import pytest

from ticket.config_schema import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    nesting_depth,
    read_document,
)


class _RefusedError(Exception):
    pass


class _ParseError(Exception):
    pass


def _read(path: Path, parse: object = json.loads) -> object:
    return read_document(path, parse=parse, parse_error=_ParseError, error_type=_RefusedError)  # type: ignore[arg-type]


def _must_not_parse(text: str) -> object:
    raise AssertionError("parsed a file that should have been refused first")


def test_a_file_over_the_size_cap_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))

    with pytest.raises(_RefusedError, match=rf"^{path}: {MAX_CONFIG_BYTES + 1} bytes is over the"):
        _read(path, _must_not_parse)


def test_a_file_at_the_size_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("1" + " " * (MAX_CONFIG_BYTES - 1))

    assert _read(path) == 1


def test_deep_brackets_are_refused_before_parsing_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 100_000)

    with pytest.raises(_RefusedError, match=rf"^{path}: nested \d+ levels deep; .* at most 50"):
        _read(path, _must_not_parse)


def test_a_recursion_error_from_the_parser_is_a_clean_refusal(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\n")

    def recurse(text: str) -> object:
        return recurse(text)

    with pytest.raises(_RefusedError, match="nested too deeply to parse"):
        _read(path, recurse)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("a: 1\n", 1),
        ("a:\n  b:\n    c: [1, {d: 2}]\n", 5),
        ("- - - x\n", 4),
        ("a: 1\n# [[[[ in a comment\nb: 2\n", 5),  # an overestimate, never an underestimate
    ],
)
def test_nesting_depth_bounds_the_document(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "block.yaml"
    path.write_text("".join(f"{' ' * i}k{i}:\n" for i in range(MAX_CONFIG_DEPTH + 1)))

    with pytest.raises(_RefusedError, match="levels deep"):
        _read(path, _must_not_parse)


def test_the_example_configs_are_well_inside_the_limits() -> None:
    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    for path in sorted(examples.glob("*.yaml")):
        text = path.read_text()
        assert len(text.encode()) < MAX_CONFIG_BYTES // 10
        assert nesting_depth(text) < MAX_CONFIG_DEPTH // 5, path


def test_the_recursion_limit_is_far_above_the_depth_cap() -> None:
    assert sys.getrecursionlimit() > 10 * MAX_CONFIG_DEPTH
