"""Packed-vector codec: oracle round trips, pinned wire bytes, and every way decoding must fail."""

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ticket.codec import (
    DTYPES,
    HEADER_BYTES,
    Kind,
    PackedHeader,
    decode_vector,
    encode_vector,
    header_size,
    message_size,
    read_header,
)
from ticket.errors import CodecError
from ticket.packing import PackLayout

TICKET_ID = "0123456789abcdef" * 4
OTHER_ID = "fedcba9876543210" * 4
ROUND = 3
# Distinctive values: no error message may quote them.
SECRET = np.array([1234.5, -77.25, 0.4375, 9.0, -6.5, 0.015625], dtype=np.float32)
SECRET_SEGMENTS = (2, 4)
SECRET_TEXTS = ("1234.5", "77.25", "0.4375", "6.5", "0.015625")

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
vectors32 = hnp.arrays(np.float32, st.integers(0, 40), elements=finite32)


def encode(vector: np.ndarray, **overrides: Any) -> bytes:
    options: dict[str, Any] = {"kind": Kind.UPDATE, "ticket_id": TICKET_ID, "round": ROUND}
    return encode_vector(vector, **{**options, **overrides})


def decode(data: bytes, length: int, **overrides: Any) -> np.ndarray:
    options: dict[str, Any] = {"kind": Kind.UPDATE, "ticket_id": TICKET_ID, "round": ROUND}
    return decode_vector(data, length=length, **{**options, **overrides})


def encode_int8(vector: np.ndarray, segments: tuple[int, ...], seed: int = 0, **kw: Any) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(vector, dtype="int8", segment_sizes=segments, rng=rng, **kw)


def int8_scales(data: bytes, segments: tuple[int, ...]) -> np.ndarray:
    """Scale of every value, read back from the message: [n]."""
    scales = np.frombuffer(data, "<f4", len(segments), HEADER_BYTES).astype(np.float64)
    return np.repeat(scales, segments)


def refused(data: bytes, match: str, length: int = SECRET.size, **overrides: Any) -> str:
    """Decoding fails with `match`, and the message quotes none of the vector's values."""
    with pytest.raises(CodecError, match=match) as error:
        decode(data, length, **{"segment_sizes": SECRET_SEGMENTS, **overrides})
    message = str(error.value)
    assert not any(text in message for text in SECRET_TEXTS), message
    return message


def patched(data: bytes, offset: int, raw: bytes) -> bytes:
    return data[:offset] + raw + data[offset + len(raw) :]


# ---------------------------------------------------------------- golden bytes and sizes


def test_golden_float32_bytes() -> None:
    data = encode(np.array([1.0, -2.5, 0.125], dtype=np.float32), round=7)

    assert data.hex() == (
        "54465056" "01" "02" "01" "00" "07000000" "03000000"  # magic, version, UPDATE, float32
        + TICKET_ID
        + "0000803f" "000020c0" "0000003e"  # 1.0, -2.5, 0.125
    )  # fmt: skip


def test_golden_int8_bytes_with_a_seeded_rng() -> None:
    vector = np.array([0.3, -1.0, 0.01, 2.0, -0.5], dtype=np.float32)

    data = encode_int8(vector, (2, 3), seed=0, kind=Kind.MODEL, round=1)

    assert data.hex() == (
        "54465056" "01" "01" "03" "00" "01000000" "05000000"  # magic, version, MODEL, int8
        + TICKET_ID
        + "0502013c" "0502813c"  # scales 1/127 and 2/127 (float32, rounded up)
        + "26" "81" "00" "7f" "e1"  # 38, -127, 0, 127, -31
    )  # fmt: skip


def test_header_is_48_bytes_and_float32_is_48_plus_4n() -> None:
    assert HEADER_BYTES == 48 == header_size("float32", 0) == header_size("float16", 9)
    assert header_size("int8", 3) == 48 + 4 * 3
    for n in (0, 1, 7, 1000):
        vector = np.ones(n, dtype=np.float32)
        assert len(encode(vector)) == 48 + 4 * n == message_size("float32", n)
        assert len(encode(vector, dtype="float16")) == 48 + 2 * n == message_size("float16", n)
        assert len(encode_int8(vector, (n,))) == 48 + 4 + n == message_size("int8", n, 1)


def test_header_size_refuses_an_unknown_dtype_and_negative_segments() -> None:
    with pytest.raises(CodecError, match="unknown dtype 'int4'"):
        header_size("int4", 0)
    with pytest.raises(CodecError, match="segment count"):
        header_size("int8", -1)


def test_read_header_reports_every_field() -> None:
    data = encode_int8(SECRET, SECRET_SEGMENTS, kind=Kind.MODEL, round=2**32 - 1)

    assert read_header(data) == PackedHeader(1, Kind.MODEL, "int8", TICKET_ID, 2**32 - 1, 6)


# ---------------------------------------------------------------- round trips


@settings(max_examples=80, deadline=None)
@given(vectors32)
def test_float32_round_trip_is_bit_exact(vector: np.ndarray) -> None:
    decoded = decode(encode(vector), vector.size)

    assert decoded.dtype == np.float32
    assert decoded.tobytes() == vector.tobytes()  # -0.0 and subnormals included


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 40), elements=st.floats(-65504, 65504, width=32)))
def test_float16_round_trip_is_within_half_precision(vector: np.ndarray) -> None:
    decoded = decode(encode(vector, dtype="float16"), vector.size)

    # Half an ulp of float16: 2^-11 relative for normals, 2^-25 absolute for subnormals.
    bound = np.maximum(np.abs(vector.astype(np.float64)) * 2.0**-11, 2.0**-25)
    assert (np.abs(decoded.astype(np.float64) - vector) <= bound).all()


def test_float16_refuses_values_beyond_its_range() -> None:
    top = np.array([65504.0, -65504.0], dtype=np.float32)
    np.testing.assert_array_equal(decode(encode(top, dtype="float16"), 2), top)

    for value in (65505.0, -65520.0, 1e30):
        with pytest.raises(CodecError, match=r"beyond float16's range \(\|x\| > 65504\)"):
            encode(np.array([0.0, value], dtype=np.float32), dtype="float16")


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 40), elements=finite32),
    st.data(),
)
def test_int8_error_is_at_most_one_scale(vector: np.ndarray, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, vector.size), max_size=3)))
    segments = tuple(np.diff([0, *cuts, vector.size]).tolist())

    message = encode_int8(vector, segments, seed=data.draw(st.integers(0, 2**32)))
    decoded = decode(message, vector.size, segment_sizes=segments)

    scales = int8_scales(message, segments)
    magnitudes = np.abs(vector.astype(np.float64))
    error = np.abs(decoded.astype(np.float64) - vector)
    assert (error <= scales * (1 + 1e-5)).all()
    for start, stop in zip(np.cumsum((0, *segments))[:-1], np.cumsum(segments), strict=True):
        top = magnitudes[start:stop].max(initial=0.0)
        # scale = max|x| / 127, rounded to float32 (2^-149 apart where that is subnormal).
        assert (np.abs(scales[start:stop] - top / 127) <= top / 127 * 2**-22 + 2**-149).all()


def test_int8_is_unbiased() -> None:
    # Rounding to nearest would send 0.3 of a step as 0 every time; stochastic is right on average.
    vector = np.array([1.0, 0.3 / 127, -0.5, 0.123, 0.0, -2.0, 0.77], dtype=np.float32)
    segments = (4, 3)
    rng = np.random.default_rng(42)
    trials = 4000

    decoded = [
        decode(
            encode(vector, dtype="int8", segment_sizes=segments, rng=rng),
            vector.size,
            segment_sizes=segments,
        )
        for _ in range(trials)
    ]

    scales = np.repeat([1.0 / 127, 2.0 / 127], segments)
    # Each draw is within one scale of x, so its std is at most scale / 2; allow 5 sigma.
    tolerance = 5 * (scales / 2) / np.sqrt(trials)
    assert (np.abs(np.mean(decoded, axis=0) - vector) <= tolerance).all()


def test_int8_extremes_decode_finite_and_within_one_scale() -> None:
    top = np.finfo(np.float32).max
    tiny = np.float32(2e-43)  # subnormal: top / 127 is not even a float32
    for vector in ([top, -top, top / 3], [tiny, -tiny / 2, 0.0]):
        x = np.array(vector, dtype=np.float32)
        data = encode_int8(x, (3,))

        decoded = decode(data, 3, segment_sizes=(3,))

        assert np.isfinite(decoded).all()
        error = np.abs(decoded.astype(np.float64) - x)
        assert (error <= int8_scales(data, (3,)) * (1 + 1e-5)).all()


def test_int8_all_zero_segment_has_scale_zero_and_zero_values() -> None:
    vector = np.array([0.0, -0.0, 0.0, 5.0], dtype=np.float32)

    data = encode_int8(vector, (3, 1))

    assert data[HEADER_BYTES : HEADER_BYTES + 4] == b"\0\0\0\0"
    assert data[-4:-1] == b"\0\0\0"
    decoded = decode(data, 4, segment_sizes=(3, 1))
    assert decoded[:3].tobytes() == bytes(12)  # +0.0 exactly
    assert decoded[3] == pytest.approx(5.0, rel=1e-6)


def test_a_tickets_packed_weights_cross_the_wire() -> None:
    mask = np.array([[True, False, True], [False, True, True]])
    layout = PackLayout.from_masks({"fc.bias": (2,), "fc.weight": (2, 3)}, {"fc.weight": mask})
    weights = {"fc.bias": np.array([0.5, -0.25]), "fc.weight": np.arange(6.0).reshape(2, 3)}
    vector = layout.pack(weights)

    for dtype in DTYPES:
        data = encode(
            vector, dtype=dtype, segment_sizes=layout.segment_sizes, rng=np.random.default_rng(0)
        )
        decoded = decode(data, layout.size, segment_sizes=layout.segment_sizes, dtype=dtype)
        unpacked = layout.unpack(decoded)
        assert unpacked["fc.weight"][~mask].tolist() == [0.0, 0.0]
        if dtype != "int8":  # all these values are exact in float16
            np.testing.assert_array_equal(unpacked["fc.weight"], weights["fc.weight"] * mask)


# ---------------------------------------------------------------- encoding refuses


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_encode_refuses_non_finite_values(bad: float) -> None:
    vector = np.array([1.0, bad, 2.0], dtype=np.float64)

    with pytest.raises(CodecError, match="NaN or Inf"):
        encode(vector)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dtype": "bfloat16"}, "unknown dtype 'bfloat16'; choose one of: float32, float16, int8"),
        ({"round": -1}, r"round -1 is outside 0\.\.4294967295"),
        ({"round": 2**32}, "round 4294967296 is outside"),
        ({"round": 1.0}, "round must be an integer, got float"),
        ({"round": True}, "round must be an integer, got bool"),
        ({"ticket_id": TICKET_ID[:-1]}, "ticket id must be 64 lowercase hex"),
        ({"ticket_id": TICKET_ID.upper()}, "ticket id must be 64 lowercase hex"),
        ({"ticket_id": "g" * 64}, "ticket id must be 64 lowercase hex"),
        ({"kind": 3}, "unknown message kind 3"),
        ({"dtype": "int8", "rng": np.random.default_rng(0)}, "needs segment_sizes and an rng"),
        ({"dtype": "int8", "segment_sizes": (6,)}, "needs segment_sizes and an rng"),
        ({"segment_sizes": (2, 3)}, "segment sizes add up to 5, but the length is 6"),
        ({"segment_sizes": (7, -1)}, "segment sizes must be >= 0"),
        ({"segment_sizes": (2.0, 4.0)}, "segment sizes must be integers"),
    ],
)
def test_encode_refuses_bad_arguments(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(CodecError, match=match):
        encode(SECRET, **overrides)


@pytest.mark.parametrize("vector", [np.zeros((2, 3), np.float32), np.arange(4)])
def test_encode_refuses_anything_but_a_flat_float_vector(vector: np.ndarray) -> None:
    with pytest.raises(CodecError, match="vector must be 1-D floats"):
        encode(vector)


# ---------------------------------------------------------------- decoding refuses


@pytest.fixture
def float32_message() -> bytes:
    return encode(SECRET)


@pytest.fixture
def int8_message() -> bytes:
    return encode_int8(SECRET, SECRET_SEGMENTS)


@pytest.mark.parametrize(
    ("data", "name"),
    [(None, "NoneType"), ("TFPV", "str"), ([84, 70, 80, 86], "list"), (7, "int")],
)
def test_decode_refuses_what_is_not_bytes(data: Any, name: str) -> None:
    refused(data, f"message must be bytes, got {name}$")
    with pytest.raises(CodecError, match=f"got {name}$"):
        read_header(data)


def test_decode_reads_a_bytearray_or_memoryview_as_bytes(int8_message: bytes) -> None:
    expected = decode(int8_message, SECRET.size, segment_sizes=SECRET_SEGMENTS)
    # A view whose items are not bytes, and one with strides: its raw bytes, in order, count.
    words = memoryview(bytearray(int8_message + b"\0\0")).cast("H")[: len(int8_message) // 2]
    every_other = memoryview(bytes(b for b in int8_message for _ in (0, 1)))[::2]

    for data in (bytearray(int8_message), memoryview(int8_message), words, every_other):
        decoded = decode(data, SECRET.size, segment_sizes=SECRET_SEGMENTS)  # type: ignore[arg-type]
        np.testing.assert_array_equal(decoded, expected)
    assert read_header(memoryview(int8_message)).round == ROUND


def test_decode_refuses_bad_magic(float32_message: bytes) -> None:
    refused(patched(float32_message, 0, b"TFPW"), r"bad magic")


def test_decode_refuses_an_unknown_version(float32_message: bytes) -> None:
    refused(patched(float32_message, 4, b"\x02"), "version 2 is not supported; this reads 1")


def test_decode_refuses_a_model_replayed_as_an_update() -> None:
    model = encode(SECRET, kind=Kind.MODEL)

    refused(model, "message kind is MODEL, expected UPDATE", kind=Kind.UPDATE)
    refused(encode(SECRET), "message kind is UPDATE, expected MODEL", kind=Kind.MODEL)


def test_decode_refuses_an_unknown_kind_code(float32_message: bytes) -> None:
    refused(patched(float32_message, 5, b"\x07"), "unknown message kind code 7")


@pytest.mark.parametrize("code", [0, 4, 255])
def test_decode_refuses_an_unknown_dtype_code(float32_message: bytes, code: int) -> None:
    refused(patched(float32_message, 6, bytes([code])), f"unknown dtype code {code}")


def test_decode_refuses_a_nonzero_reserved_byte(float32_message: bytes) -> None:
    refused(patched(float32_message, 7, b"\x01"), "reserved header byte is not zero")


def test_decode_refuses_another_tickets_message(float32_message: bytes) -> None:
    message = refused(
        float32_message,
        "message is for another ticket: expected fedcba987654, got 0123456789ab$",
        ticket_id=OTHER_ID,
    )
    assert TICKET_ID[:13] not in message and OTHER_ID[:13] not in message


def test_decode_refuses_another_rounds_message(float32_message: bytes) -> None:
    refused(float32_message, "message is for another round: expected 4, got 3", round=4)


def test_decode_refuses_a_length_other_than_expected(float32_message: bytes) -> None:
    refused(float32_message, "header length is 6 values, expected 7", length=7)


def test_decode_refuses_a_dtype_other_than_pinned(float32_message: bytes) -> None:
    refused(float32_message, "expected dtype int8, got float32", dtype="int8")


def test_decode_refuses_a_truncated_payload(float32_message: bytes) -> None:
    refused(float32_message[:-1], "message is truncated: 71 bytes, expected 72")


def test_decode_refuses_trailing_bytes(int8_message: bytes) -> None:
    refused(int8_message + b"\0\0", "message has 2 trailing byte")


def test_a_payload_is_bounded_by_the_receivers_mask_not_by_its_header(
    float32_message: bytes,
) -> None:
    # Wire payload bounds (issue 12): the receiver knows the length from its own ticket, so a
    # sender can neither claim more values nor attach more bytes than that length implies.
    huge = patched(float32_message, 12, (2**32 - 1).to_bytes(4, "little"))
    refused(huge, "header length is 4294967295 values, expected 6")
    refused(float32_message + bytes(1 << 20), f"message has {1 << 20} trailing byte")


def test_decode_refuses_bad_expectations(float32_message: bytes) -> None:
    refused(float32_message, "ticket id must be 64 lowercase hex", ticket_id="abc")
    refused(float32_message, "round -1 is outside", round=-1)
    refused(float32_message, "unknown dtype 'f32'", dtype="f32")
    refused(float32_message, "segment sizes add up to 5", segment_sizes=(5,))


def test_decode_of_int8_needs_segment_sizes(int8_message: bytes) -> None:
    with pytest.raises(CodecError, match="decoding an int8 message needs segment_sizes"):
        decode(int8_message, SECRET.size)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("dtype", "wire"), [("float32", "<f4"), ("float16", "<f2")])
def test_decode_refuses_non_finite_values(bad: float, dtype: str, wire: str) -> None:
    data = encode(np.zeros(SECRET.size, dtype=np.float32), dtype=dtype)
    raw = np.array([bad], dtype=wire).tobytes()

    refused(patched(data, HEADER_BYTES + len(raw), raw), "payload holds NaN or Inf")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_decode_refuses_non_finite_scales(int8_message: bytes, bad: float) -> None:
    raw = np.array([bad], dtype="<f4").tobytes()

    refused(patched(int8_message, HEADER_BYTES + 4, raw), "int8 scales hold NaN or Inf")


@pytest.mark.parametrize("bad", [-0.5, -0.0])
def test_decode_refuses_a_negative_scale(int8_message: bytes, bad: float) -> None:
    raw = np.array([bad], dtype="<f4").tobytes()

    refused(patched(int8_message, HEADER_BYTES + 4, raw), "int8 scale of segment 1 is negative")


def test_decode_refuses_int8_minus_128(int8_message: bytes) -> None:
    refused(patched(int8_message, len(int8_message) - 1, b"\x80"), r"holds -128, outside")


def test_decode_refuses_values_in_a_zero_scale_segment() -> None:
    data = encode_int8(np.array([0.0, 0.0, 1.0], dtype=np.float32), (2, 1))

    refused(
        patched(data, len(data) - 2, b"\x01"),
        "scale 0 has nonzero values",
        length=3,
        segment_sizes=(2, 1),
    )


def test_decode_refuses_a_scale_that_overflows_float32(int8_message: bytes) -> None:
    raw = struct.pack("<f", 3e38)

    refused(patched(int8_message, HEADER_BYTES, raw), "overflow float32")


# ---------------------------------------------------------------- truncation and corruption


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_truncation_is_refused(dtype: str) -> None:
    data = encode(SECRET, dtype=dtype, segment_sizes=SECRET_SEGMENTS, rng=np.random.default_rng(0))

    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:cut], SECRET.size, segment_sizes=SECRET_SEGMENTS)
        if cut < HEADER_BYTES:
            with pytest.raises(CodecError, match="truncated"):
                read_header(data[:cut])


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_single_byte_change_of_the_header_is_refused(dtype: str) -> None:
    rng = np.random.default_rng(0)
    data = encode(SECRET, dtype=dtype, segment_sizes=SECRET_SEGMENTS, rng=rng)
    expect = {"segment_sizes": SECRET_SEGMENTS, "dtype": dtype}

    for at in range(HEADER_BYTES):
        for byte in set(range(256)) - {data[at]}:
            with pytest.raises(CodecError):
                decode(patched(data, at, bytes([byte])), SECRET.size, **expect)


def test_pinning_the_dtype_catches_a_dtype_byte_the_size_check_cannot() -> None:
    # 4 float32 values and int8 over 3 segments are both 64 bytes long.
    segments = (1, 1, 2)
    data = patched(encode(np.zeros(4, dtype=np.float32)), 6, b"\x03")  # float32 -> int8

    decode(data, 4, segment_sizes=segments)  # accepted: the receiver did not say what it expects
    with pytest.raises(CodecError, match="expected dtype float32, got int8"):
        decode(data, 4, segment_sizes=segments, dtype="float32")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_corrupted_float32_byte_is_refused_in_the_header_and_changes_the_payload(
    data: st.DataObject,
) -> None:
    vector = data.draw(hnp.arrays(np.float32, st.integers(1, 8), elements=finite32))
    segments = (vector.size,)
    message = encode(vector)
    at = data.draw(st.integers(0, len(message) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != message[at]))
    corrupt = patched(message, at, bytes([byte]))

    try:
        decoded = decode(corrupt, vector.size, segment_sizes=segments, dtype="float32")
    except CodecError:
        return
    assert at >= HEADER_BYTES, "a corrupted header byte was accepted"
    assert decoded.shape == vector.shape and decoded.tobytes() != vector.tobytes()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_corrupted_int8_byte_is_refused_in_the_header_and_never_crashes(
    data: st.DataObject,
) -> None:
    message = encode_int8(SECRET, SECRET_SEGMENTS)
    at = data.draw(st.integers(0, len(message) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != message[at]))
    corrupt = patched(message, at, bytes([byte]))

    try:
        decoded = decode(corrupt, SECRET.size, segment_sizes=SECRET_SEGMENTS, dtype="int8")
    except CodecError:
        return
    assert at >= HEADER_BYTES, "a corrupted header byte was accepted"
    assert decoded.dtype == np.float32 and decoded.shape == SECRET.shape
    assert np.isfinite(decoded).all()
