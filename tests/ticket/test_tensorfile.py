"""The safe tensor container: round trips, the exact table format, and strict decoding."""

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ticket.tensorfile import (
    ALLOWED_DTYPES,
    TensorFileError,
    canonical_json,
    decode_tensors,
    encode_tensors,
    parse_json,
    read_tensor_file,
    write_tensor_file,
)


def _sample() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
        "h": np.array([1.5, -0.25], dtype=np.float16),
        "bits": np.array([0, 255, 7], dtype=np.uint8),
        "signed": np.array([[-128], [127]], dtype=np.int8),
        "step": np.array(2**40, dtype=np.int64),  # a 0-d array: shape []
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def _assert_same(decoded: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> None:
    assert list(decoded) == list(original)
    for name, array in original.items():
        assert decoded[name].dtype == array.dtype
        assert decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)


def test_round_trip_keeps_names_order_dtypes_shapes_and_values() -> None:
    tensors = _sample()

    table, blob = encode_tensors(tensors)
    decoded = decode_tensors(table, blob)

    _assert_same(decoded, tensors)
    assert all(array.flags.writeable for array in decoded.values())


def test_table_format_is_exactly_as_documented() -> None:
    table, blob = encode_tensors(
        {"a": np.array([1, 2, 3], dtype=np.int8), "b": np.array([1.0], dtype=">f4")}
    )

    assert table == [
        {"name": "a", "dtype": "int8", "shape": [3], "offset": 0, "nbytes": 3},
        {"name": "b", "dtype": "float32", "shape": [1], "offset": 3, "nbytes": 4},
    ]
    assert blob == b"\x01\x02\x03" + b"\x00\x00\x80\x3f"  # little-endian even from big-endian input


def test_fortran_order_input_is_stored_in_c_order() -> None:
    array = np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))

    _, blob = encode_tensors({"x": array})

    assert blob == np.arange(6, dtype="<i8").tobytes()


@given(
    st.lists(
        hnp.arrays(
            dtype=st.sampled_from(sorted(ALLOWED_DTYPES)),
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        ),
        max_size=4,
    )
)
def test_any_allowed_arrays_round_trip(arrays: list[np.ndarray]) -> None:
    tensors = {f"t{i}": array for i, array in enumerate(arrays)}

    decoded = decode_tensors(*encode_tensors(tensors))

    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype
        # Bit patterns, so NaN payloads and -0.0 count too.
        assert decoded[name].tobytes() == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize("dtype", ["float64", "int32", "bool", "complex64"])
def test_encode_refuses_other_dtypes(dtype: str) -> None:
    with pytest.raises(TensorFileError, match=f"dtype {dtype}"):
        encode_tensors({"x": np.zeros(2, dtype=dtype)})


def test_encode_refuses_object_arrays() -> None:
    with pytest.raises(TensorFileError):
        encode_tensors({"x": np.array([{"a": 1}], dtype=object)})


def _good() -> tuple[list[dict[str, Any]], bytes]:
    return encode_tensors({"a": np.arange(4, dtype=np.float32), "b": np.arange(2, dtype=np.int8)})


def _edit(change: Any) -> tuple[Any, bytes]:
    table, blob = _good()
    table = copy.deepcopy(table)
    edited = change(table, blob)
    return edited if isinstance(edited, tuple) else (table, blob)


CORRUPTIONS: dict[str, Any] = {
    "table is not a list": lambda t, b: ({"a": t[0]}, b),
    "entry is not an object": lambda t, b: ([t[0], ["b"]], b),
    "missing key": lambda t, b: t[1].pop("nbytes"),
    "unknown key": lambda t, b: t[1].update(extra=1),
    "empty name": lambda t, b: t[0].update(name=""),
    "name not a string": lambda t, b: t[0].update(name=7),
    "duplicate name": lambda t, b: t[1].update(name="a"),
    "dtype not allowed": lambda t, b: t[0].update(dtype="float64", nbytes=32),
    "dtype object": lambda t, b: t[0].update(dtype="object"),
    "dtype not a string": lambda t, b: t[0].update(dtype=["float32"]),
    "negative dimension": lambda t, b: t[0].update(shape=[-4]),
    "boolean dimension": lambda t, b: t[1].update(shape=[True, 2]),
    "float dimension": lambda t, b: t[0].update(shape=[4.0]),
    "shape not a list": lambda t, b: t[0].update(shape=4),
    "gap between tensors": lambda t, b: (t[1].update(offset=17), (t, b + b"\x00"))[1],
    "overlapping tensors": lambda t, b: t[1].update(offset=12),
    "offset not an int": lambda t, b: t[0].update(offset=0.0),
    "nbytes disagrees with shape": lambda t, b: t[0].update(nbytes=12),
    "blob too short": lambda t, b: (t, b[:-1]),
    "trailing bytes": lambda t, b: (t, b + b"\x00"),
    "huge shape": lambda t, b: t[0].update(shape=[2**62], nbytes=2**64),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_decode_refuses(corruption: str) -> None:
    table, blob = _edit(CORRUPTIONS[corruption])

    with pytest.raises(TensorFileError) as caught:
        decode_tensors(table, blob)

    assert isinstance(caught.value, ValueError)  # callers may catch it as a ValueError


def test_decode_accepts_declared_extra_keys_only() -> None:
    table, blob = _good()
    table[0]["param_shape"] = [2, 2]

    assert list(decode_tensors(table, blob, extra_keys={"param_shape"})) == ["a", "b"]
    with pytest.raises(TensorFileError, match="param_shape"):
        decode_tensors(table, blob)


# ---------------------------------------------------------------- standalone files


def test_tensor_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "level-000.tensors"
    meta = {"metrics": {"loss": math.nan, "accuracy": 0.5}, "level": 0}

    write_tensor_file(path, _sample(), meta)
    tensors, read_meta = read_tensor_file(path)

    _assert_same(tensors, _sample())
    assert read_meta["level"] == 0
    assert math.isnan(read_meta["metrics"]["loss"])  # a diverged run can still checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["level-000.tensors"]  # no temp left


def test_tensor_file_overwrite_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.tensors"
    write_tensor_file(path, {"a": np.zeros(3, dtype=np.float32)}, {"v": 1})

    write_tensor_file(path, {"b": np.ones(2, dtype=np.int8)}, {"v": 2})

    tensors, meta = read_tensor_file(path)
    assert list(tensors) == ["b"]
    assert meta == {"v": 2}


def test_tensor_file_detects_any_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "x.tensors"
    write_tensor_file(path, {"a": np.arange(3, dtype=np.float32)}, {"note": "hi"})
    data = path.read_bytes()

    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises(TensorFileError):
            read_tensor_file(path)


@pytest.mark.parametrize("length", [0, 5, 13, 40])
def test_tensor_file_detects_truncation(tmp_path: Path, length: int) -> None:
    path = tmp_path / "x.tensors"
    write_tensor_file(path, {"a": np.arange(3, dtype=np.float32)}, {})
    path.write_bytes(path.read_bytes()[:length])

    with pytest.raises(TensorFileError, match=str(path)):
        read_tensor_file(path)


def test_tensor_file_refuses_a_ticket(tmp_path: Path) -> None:
    path = tmp_path / "x.ticket"
    path.write_bytes(b"TICKETF\x00" + bytes(64))

    with pytest.raises(TensorFileError, match="not a tensor file"):
        read_tensor_file(path)


# ---------------------------------------------------------------- JSON


def test_canonical_json_is_sorted_compact_ascii() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "é"}) == b'{"a":"\\u00e9","b":[1,2.5]}'


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_canonical_json_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": value})


@pytest.mark.parametrize(
    "data", [b'{"x":NaN}', b"[Infinity]", b"[" * 100_000, b'"\xff"', b"{", b""]
)
def test_parse_json_raises_value_error_for_anything_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(data)
