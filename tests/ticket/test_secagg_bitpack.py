"""Bit-packing against a bit-by-bit oracle: the grouped, strided packer writes and reads the
same little-endian bit stream as the obvious loop, at every width and length."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticket.secagg import pack_bits, unpack_bits


def _naive_pack(values: list[int], bits: int) -> bytes:
    """Value i's bit b at stream position i * bits + b, least significant bit of byte 0 first."""
    out = bytearray((len(values) * bits + 7) // 8)
    for i, value in enumerate(values):
        for b in range(bits):
            if value >> b & 1:
                position = i * bits + b
                out[position // 8] |= 1 << (position % 8)
    return bytes(out)


@settings(max_examples=120, deadline=None)
@given(bits=st.integers(1, 32), data=st.data())
def test_packing_matches_the_bit_by_bit_oracle(bits: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=70))

    packed = pack_bits(np.array(values, dtype=np.uint32), bits)

    assert packed == _naive_pack(values, bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, len(values)), values)


@pytest.mark.parametrize("bits", [1, 7, 8, 17, 24, 31, 32])
@pytest.mark.parametrize("count", [8 * 1250, 10_003])
def test_long_vectors_round_trip_at_every_tail(bits: int, count: int) -> None:
    values = np.random.default_rng(bits).integers(0, 2**bits, count, dtype=np.uint64)
    values = values.astype(np.uint32)
    values[-1] = 2**bits - 1  # the last value's top bits sit in the last byte

    packed = pack_bits(values, bits)

    assert len(packed) == (count * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(packed, bits, count), values)
    head = [int(v) for v in values[:40]]
    assert packed[: 40 * bits // 8] == _naive_pack(head, bits)[: 40 * bits // 8]


def test_unpack_returns_a_fresh_writable_vector() -> None:
    packed = pack_bits(np.arange(9, dtype=np.uint32), 5)

    values = unpack_bits(packed, 5, 9)
    values += 1  # the server adds into what unpack returns

    assert values.dtype == np.uint32
    np.testing.assert_array_equal(values, np.arange(1, 10))
