"""Packed vectors <-> bytes: one strict, versioned message per model download or update upload.

Layout (version 1, integers unsigned little-endian; docs/ticket-format.md has the details):

    magic b"TFPV" | u8 version | u8 kind | u8 dtype code | u8 reserved = 0
    | u32 round | u32 length | 32 bytes raw ticket id | payload

The fixed header is 48 bytes, so a float32 update of n values is 48 + 4n bytes, float16
48 + 2n, and int8 48 + 4s + n for s segments (one float32 scale per segment, then the values).
int8 rounds stochastically, so the decoded vector is an unbiased estimate of the encoded one.
Decoding checks everything the receiver knows (kind, ticket, round, length, size) and raises
CodecError naming the first mismatch; messages never quote the values.
"""

import operator
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from ticket.errors import CodecError

MAGIC = b"TFPV"
VERSION = 1
DTYPES = ("float32", "float16", "int8")
HEADER_BYTES = 48

_HEADER = struct.Struct("<4sBBBBII32s")  # magic, version, kind, dtype, reserved, round, length, id
_DTYPE_CODES = {"float32": 1, "float16": 2, "int8": 3}  # 0 is never valid: an unset byte
_DTYPE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}
_WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("<i1"),
}
_SCALE_DTYPE: np.dtype[Any] = np.dtype("<f4")
_U32_MAX = 2**32 - 1
_FLOAT16_MAX = 65504.0
_INT8_LEVELS = 127  # symmetric: -128 is never sent, so negating a message stays in range
# The largest float32 scale whose 127 multiple is still finite: 127 * it <= float32 max.
_MAX_SCALE = np.float32(float.fromhex("0x1.020406p+121"))
_ID_SHOWN = 12  # hex characters of a ticket id quoted in errors

Vector = npt.NDArray[np.float32]


class Kind(IntEnum):
    """Direction of a message; checked on decode so one cannot be replayed as the other."""

    MODEL = 1  # server -> device: the global values of the round
    UPDATE = 2  # device -> server: the device's trained values


@dataclass(frozen=True)
class PackedHeader:
    version: int
    kind: Kind
    dtype: str  # one of DTYPES
    ticket_id: str  # 64 lowercase hex characters: the ticket's content id
    round: int
    length: int  # number of values, n


def header_size(dtype: str, segments: int) -> int:
    """Bytes before the values: the fixed header, plus one float32 scale per segment for int8."""
    _check_dtype(dtype)
    if segments < 0:
        raise CodecError(f"segment count must be >= 0, got {segments}")
    return HEADER_BYTES + (_SCALE_DTYPE.itemsize * segments if dtype == "int8" else 0)


def message_size(dtype: str, length: int, segments: int = 0) -> int:
    """Total bytes of a message of `length` values (e.g. to budget an upload)."""
    return header_size(dtype, segments) + _WIRE_DTYPES[dtype].itemsize * length


# ---------------------------------------------------------------- encoding


def encode_vector(
    vector: np.ndarray,
    *,
    kind: Kind,
    ticket_id: str,
    round: int,
    dtype: str = "float32",
    segment_sizes: Sequence[int] | None = None,
    rng: np.random.Generator | None = None,
) -> bytes:
    """The message for `vector`; int8 needs `segment_sizes` (summing to its length) and `rng`.

    `segment_sizes` is checked but unused for the float dtypes, so callers may always pass it.
    """
    values = _check_vector(vector)
    _check_dtype(dtype)
    sizes = _check_segments(segment_sizes, values.size)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        _check_kind(kind),
        _DTYPE_CODES[dtype],
        0,
        _check_round(round),
        values.size,
        bytes.fromhex(_check_ticket_id(ticket_id)),
    )
    if dtype == "float16" and values.size and np.abs(values).max() > _FLOAT16_MAX:
        raise CodecError(f"vector has values beyond float16's range (|x| > {_FLOAT16_MAX:g})")
    if dtype != "int8":
        return header + values.astype(_WIRE_DTYPES[dtype]).tobytes()
    if sizes is None or rng is None:
        raise CodecError("int8 encoding needs segment_sizes and an rng")
    scales, levels = _quantize(values, sizes, rng)
    return header + scales.tobytes() + levels.tobytes()


def _quantize(
    values: Vector, sizes: tuple[int, ...], rng: np.random.Generator
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """(scales [segments] <f4, levels [n] i1) with E[level * scale] = value."""
    starts = np.cumsum((0, *sizes))
    magnitudes = np.abs(values)
    scales = np.array(
        [_scale_for(float(magnitudes[a:b].max(initial=0.0))) for a, b in pairwise(starts)],
        dtype=_SCALE_DTYPE,
    )
    per_value = np.repeat(scales.astype(np.float64), sizes)  # [n]
    is_scaled = per_value > 0
    ratio = np.divide(values, per_value, out=np.zeros(values.size), where=is_scaled)  # [n]
    # floor(r + u) is ceil(r) with probability frac(r), floor(r) otherwise: E = r exactly.
    noise = rng.random(values.size)  # [n], U[0, 1)
    levels = np.clip(np.floor(ratio + noise), -_INT8_LEVELS, _INT8_LEVELS)
    return scales, levels.astype(_WIRE_DTYPES["int8"])


def _scale_for(magnitude: float) -> np.float32:
    """max|x| / 127 as float32, rounded up if need be so that no |x| / scale exceeds 127."""
    scale = np.float32(magnitude / _INT8_LEVELS)
    # Exact in float64: a 24-bit mantissa times 127 needs 31 bits.
    if float(scale) * _INT8_LEVELS < magnitude:
        scale = np.nextafter(scale, np.float32(np.inf))
    # Within an ulp of float32's max, 127 * scale would decode to inf: cap it, and let the
    # top value clip (by less than one float32 ulp of it).
    return min(scale, _MAX_SCALE)


# ---------------------------------------------------------------- decoding


def read_header(data: bytes | bytearray | memoryview) -> PackedHeader:
    """Parse and check the fixed header only (not the payload's size: int8 needs segments)."""
    data = _check_data(data)
    if len(data) < HEADER_BYTES:
        raise CodecError(f"message is truncated: {len(data)} bytes, the header alone is 48")
    magic, version, kind, dtype_code, reserved, round_, length, raw_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError("not a packed vector message (bad magic)")
    if version != VERSION:
        raise CodecError(f"packed vector version {version} is not supported; this reads {VERSION}")
    if kind not in Kind.__members__.values():
        raise CodecError(f"unknown message kind code {kind}")
    if dtype_code not in _DTYPE_NAMES:
        raise CodecError(f"unknown dtype code {dtype_code}")
    if reserved != 0:
        raise CodecError("reserved header byte is not zero")
    return PackedHeader(version, Kind(kind), _DTYPE_NAMES[dtype_code], raw_id.hex(), round_, length)


def decode_vector(
    data: bytes | bytearray | memoryview,
    *,
    kind: Kind,
    ticket_id: str,
    round: int,
    length: int,
    segment_sizes: Sequence[int] | None = None,
    dtype: str | None = None,
) -> Vector:
    """float32 [length] from a message that must match every expectation given.

    `segment_sizes` is required for int8 messages; `dtype`, when given, pins the sender's
    dtype (otherwise any of DTYPES is accepted and only the size check guards that byte).
    """
    data = _check_data(data)  # first: whatever arrived, a bad message is a CodecError
    expected_kind = Kind(_check_kind(kind))
    _check_ticket_id(ticket_id)
    _check_round(round)
    if dtype is not None:
        _check_dtype(dtype)
    header = read_header(data)
    if header.kind != expected_kind:
        raise CodecError(
            f"message kind is {header.kind.name}, expected {expected_kind.name} "
            "(sent the other way, or replayed)"
        )
    if dtype is not None and header.dtype != dtype:
        raise CodecError(f"expected dtype {dtype}, got {header.dtype}")
    if header.ticket_id != ticket_id:
        raise CodecError(
            f"message is for another ticket: expected {ticket_id[:_ID_SHOWN]}, "
            f"got {header.ticket_id[:_ID_SHOWN]}"
        )
    if header.round != round:
        raise CodecError(f"message is for another round: expected {round}, got {header.round}")
    if header.length != length:
        raise CodecError(f"header length is {header.length} values, expected {length}")
    sizes = _check_segments(segment_sizes, length)
    if header.dtype != "int8":
        _check_message_size(data, message_size(header.dtype, length))
        values = np.frombuffer(data, _WIRE_DTYPES[header.dtype], length, HEADER_BYTES)
        if not np.isfinite(values).all():
            raise CodecError("payload holds NaN or Inf")
        return values.astype(np.float32)  # a writable copy in native byte order
    if sizes is None:
        raise CodecError("decoding an int8 message needs segment_sizes")
    _check_message_size(data, message_size("int8", length, len(sizes)))
    return _dequantize(data, sizes)


def _check_message_size(data: bytes | bytearray, expected: int) -> None:
    if len(data) < expected:
        raise CodecError(f"message is truncated: {len(data)} bytes, expected {expected}")
    if len(data) > expected:
        raise CodecError(f"message has {len(data) - expected} trailing byte(s) after its payload")


def _dequantize(data: bytes | bytearray, sizes: tuple[int, ...]) -> Vector:
    scales = np.frombuffer(data, _SCALE_DTYPE, len(sizes), HEADER_BYTES)  # [segments]
    if not np.isfinite(scales).all():
        raise CodecError("int8 scales hold NaN or Inf")
    is_negative = np.signbit(scales)  # -0.0 too: the encoder only ever writes +0.0
    if is_negative.any():
        raise CodecError(f"int8 scale of segment {int(np.argmax(is_negative))} is negative")
    levels_at = HEADER_BYTES + scales.nbytes
    levels = np.frombuffer(data, _WIRE_DTYPES["int8"], sum(sizes), levels_at)  # [n]
    if (levels < -_INT8_LEVELS).any():
        raise CodecError("int8 payload holds -128, outside the symmetric range [-127, 127]")
    per_value = np.repeat(scales.astype(np.float32), sizes)  # [n]
    if levels[per_value == 0].any():
        raise CodecError("int8 segment with scale 0 has nonzero values")
    with np.errstate(over="ignore"):
        values = levels.astype(np.float32) * per_value  # [n]
    if not np.isfinite(values).all():
        raise CodecError("int8 values times their scale overflow float32")
    return values


# ---------------------------------------------------------------- argument checks


def _check_data(data: object) -> bytes | bytearray:
    """The message as bytes; anything that is not a bytes-like message is a CodecError."""
    if isinstance(data, bytes | bytearray):
        return data
    if isinstance(data, memoryview):
        # tobytes() reads the raw bytes in order whatever the view's format, shape or strides;
        # len() of a view counts its items, not bytes.
        return data.tobytes()
    raise CodecError(f"message must be bytes, got {type(data).__name__}")


def _check_vector(vector: np.ndarray) -> Vector:
    array = np.asarray(vector)
    if array.ndim != 1 or array.dtype.kind != "f":
        raise CodecError(f"vector must be 1-D floats, got {array.dtype} {list(array.shape)}")
    if array.size > _U32_MAX:
        raise CodecError(f"vector has {array.size} values; a message holds at most {_U32_MAX}")
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise CodecError("vector holds NaN or Inf (or a value beyond float32's range)")
    return values


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise CodecError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")


def _check_kind(kind: Kind) -> int:
    if kind not in Kind.__members__.values():
        raise CodecError(f"unknown message kind {kind!r}; choose Kind.MODEL or Kind.UPDATE")
    return int(kind)


def _check_round(round: int) -> int:
    if isinstance(round, bool) or not isinstance(round, int | np.integer):
        raise CodecError(f"round must be an integer, got {type(round).__name__}")
    if not 0 <= round <= _U32_MAX:
        raise CodecError(f"round {round} is outside 0..{_U32_MAX}")
    return int(round)


def _check_ticket_id(ticket_id: str) -> str:
    is_hex = isinstance(ticket_id, str) and len(ticket_id) == 64
    if not is_hex or any(c not in "0123456789abcdef" for c in ticket_id):
        raise CodecError("ticket id must be 64 lowercase hex characters (a content id)")
    return ticket_id


def _check_segments(segment_sizes: Sequence[int] | None, length: int) -> tuple[int, ...] | None:
    if segment_sizes is None:
        return None
    try:
        sizes = tuple(operator.index(size) for size in segment_sizes)
    except TypeError:
        raise CodecError("segment sizes must be integers") from None
    if any(size < 0 for size in sizes):
        raise CodecError("segment sizes must be >= 0")
    if sum(sizes) != length:
        raise CodecError(f"segment sizes add up to {sum(sizes)}, but the length is {length}")
    return sizes
