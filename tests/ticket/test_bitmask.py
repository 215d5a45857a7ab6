"""ticket.bitmask: the numpy mask bits agree bit for bit with ticket.masks' torch faces."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ticket.bitmask import pack_mask, unpack_mask
from ticket.masks import pack_bits, unpack_bits


@given(st.lists(st.booleans(), min_size=0, max_size=300), st.integers(1, 5))
def test_numpy_and_torch_pack_the_same_bytes_and_unpack_the_same_mask(
    bits: list[bool], rows: int
) -> None:
    mask = np.array(bits * rows, dtype=np.bool_).reshape(rows, -1)  # [rows, len(bits)]

    packed = pack_mask(mask)

    assert packed == pack_bits(torch.from_numpy(mask))
    assert len(packed) == (mask.size + 7) // 8
    unpacked = unpack_mask(packed, mask.shape)
    assert unpacked.dtype == np.bool_ and unpacked.flags.writeable
    np.testing.assert_array_equal(unpacked, mask)
    assert torch.equal(unpack_bits(packed, mask.shape), torch.from_numpy(unpacked))


def test_bits_are_little_endian_row_major() -> None:
    mask = np.array([[True, False, False], [False, False, False], [False, False, True]])

    assert pack_mask(mask) == bytes([0b0000_0001, 0b0000_0001])


@pytest.mark.parametrize(
    ("data", "reason"), [(b"\x00\x00", "needs 1 bytes"), (b"\xff", "padding bits")]
)
def test_numpy_and_torch_refuse_the_same_bad_bits(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        unpack_mask(data, (3,))
    with pytest.raises(ValueError, match=reason):
        unpack_bits(data, (3,))
