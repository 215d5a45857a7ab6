"""Vectors of integers mod 2^bits <-> exactly ceil(k * bits / 8) bytes.

Value i fills bits [i * bits, (i + 1) * bits) of a little-endian bit stream (least
significant bit first); the padding bits of the last byte are zero, and are checked.

Eight values fill exactly `bits` bytes, and value j of such a group (j = 0..7) always starts
at bit j * bits of it: so each of the eight is read or written for every group at once, as a
strided column of bytes, with no per-value or per-bit work (a 1000-device round unpacks a
thousand vectors of 10^5 values).
"""

import numpy as np
import numpy.typing as npt

from ticket.errors import CodecError

MAX_BITS = 32
_GROUP = 8  # values per `bits` bytes
_SPAN = 5  # bytes a value of <= 32 bits starting at bit offset <= 7 can touch

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
    groups = -(-array.size // _GROUP)
    table = np.zeros((groups, _GROUP), np.uint64)  # [g, 8]: value j of group i at [i, j]
    table.ravel()[: array.size] = array
    out = np.zeros(groups * bits + _SPAN + 1, np.uint8)  # room for the last column's spill
    for j in range(_GROUP):
        start, shift = divmod(j * bits, 8)
        column = table[:, j] << np.uint64(shift)  # [g]
        for m in range(_span(shift, bits)):
            byte = (column >> np.uint64(8 * m)) & np.uint64(0xFF)
            out[start + m : start + m + groups * bits : bits] |= byte.astype(np.uint8)
    return out[: packed_size(array.size, bits)].tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> Words:
    """uint32 [count] from exactly packed_size(count, bits) bytes with zero padding bits."""
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise CodecError(f"packed vector is {len(data)} bytes, expected {expected}")
    used = count * bits % 8
    if used and data[-1] >> used:
        raise CodecError("packed vector has nonzero padding bits")
    if count == 0:
        return np.zeros(0, np.uint32)
    groups = -(-count // _GROUP)
    stream = np.zeros(groups * bits + 8, np.uint8)  # 8: the last unaligned word's tail
    stream[:expected] = np.frombuffer(data, np.uint8)
    table = np.empty((groups, _GROUP), np.uint32)  # [g, 8]
    low = np.uint64((1 << bits) - 1)
    for j in range(_GROUP):
        start, shift = divmod(j * bits, 8)
        # [g]: the 8 bytes from value j's first byte in every group, read as one <u8 each
        words = np.ndarray((groups,), "<u8", stream, start, (bits,))
        table[:, j] = (words >> np.uint64(shift)) & low
    return table.ravel()[:count].copy()


def _span(shift: int, bits: int) -> int:
    """Bytes a value of `bits` bits starting `shift` bits into a byte touches."""
    return (shift + bits + 7) // 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise CodecError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
