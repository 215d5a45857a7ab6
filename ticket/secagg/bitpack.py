"""Vectors of integers mod 2^bits <-> exactly ceil(k * bits / 8) bytes.

Value i fills bits [i * bits, (i + 1) * bits) of a little-endian bit stream (least
significant bit first); the padding bits of the last byte are zero, and are checked.
"""

import numpy as np
import numpy.typing as npt

from ticket.errors import CodecError

MAX_BITS = 32

Words = npt.NDArray[np.uint32]


def packed_size(count: int, bits: int) -> int:
    """Bytes of `count` values of `bits` bits."""
    _check_bits(bits)
    if count < 0:
        raise CodecError(f"count must be >= 0, got {count}")
    return (count * bits + 7) // 8


def pack_bits(values: npt.ArrayLike, bits: int) -> bytes:
    """The packed bytes of a 1-D vector of integers in 0..2^bits - 1."""
    _check_bits(bits)
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "ui":
        raise CodecError(f"expected a 1-D integer vector, got {array.dtype} {list(array.shape)}")
    if array.size and (array.min() < 0 or int(array.max()) >> bits):
        raise CodecError(f"values must be in 0..2^{bits} - 1")
    width = _word_bits(bits)
    words = array.astype(f"<u{width // 8}")  # [k]
    stream = np.unpackbits(words.view(np.uint8).reshape(-1, width // 8), axis=1, bitorder="little")
    return np.packbits(stream[:, :bits], bitorder="little").tobytes()  # [k, bits] -> bytes


def unpack_bits(data: bytes, bits: int, count: int) -> Words:
    """uint32 [count] from exactly packed_size(count, bits) bytes with zero padding bits."""
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise CodecError(f"packed vector is {len(data)} bytes, expected {expected}")
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    if stream[count * bits :].any():
        raise CodecError("packed vector has nonzero padding bits")
    width = _word_bits(bits)
    table = np.zeros((count, width), np.uint8)  # [k, width]
    table[:, :bits] = stream[: count * bits].reshape(count, bits)
    words = np.packbits(table, axis=1, bitorder="little")  # [k, width / 8]
    return np.ascontiguousarray(words).view(f"<u{width // 8}").ravel().astype(np.uint32)


def _word_bits(bits: int) -> int:
    return 8 if bits <= 8 else 16 if bits <= 16 else 32


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise CodecError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
