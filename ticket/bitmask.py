"""A mask's bits as a ticket stores them, in numpy only (the device decodes tickets without torch).

Row-major, least significant bit first: bit i of byte j is element 8*j + i; the padding bits of
the last byte are zero. ticket.masks.pack_bits / unpack_bits are the torch faces of these two.
"""

import numpy as np
import numpy.typing as npt


def pack_mask(mask: npt.ArrayLike) -> bytes:
    """The bits of `mask` (any shape, read as bool), ceil(size / 8) bytes."""
    flat = np.asarray(mask).reshape(-1).astype(np.bool_)  # [size]
    return np.packbits(flat, bitorder="little").tobytes()


def unpack_mask(data: bytes, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """Inverse of `pack_mask`: a fresh, writable bool array of `shape`; raises ValueError when
    `data` has the wrong length or stray padding bits."""
    count = int(np.prod(shape, dtype=np.int64))
    expected = (count + 7) // 8
    if len(data) != expected:
        raise ValueError(f"mask needs {expected} bytes for shape {shape}, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits[count:].any():
        raise ValueError("mask padding bits are not zero")
    return bits[:count].astype(np.bool_).reshape(shape)
