"""A fleet search's mask on the wire: one bit per prunable weight, deflated.

The bits run over the prunable parameters in sorted name order, each row-major (PackLayout's
order), least significant bit first; zlib then shrinks the long runs a sparse mask has (a 5%
mask of LeNet-300-100 is ~10 KB instead of 33 KB). Decoding is bounded: it inflates no more
than the exact bit count allows, so a crafted message cannot make a node allocate more than
its own mask's size, and any stray padding bit or trailing byte is refused.
"""

import zlib
from collections.abc import Mapping

import numpy as np

from ticket.errors import TicketError

LEVEL = 6  # zlib's default: deterministic bytes for the same mask


class MaskBitsError(TicketError):
    """Mask bits that do not decode to a mask of the expected shapes."""


def encode_mask(masks: Mapping[str, np.ndarray]) -> bytes:
    flat = np.concatenate([np.asarray(masks[n], np.bool_).reshape(-1) for n in sorted(masks)])
    return zlib.compress(np.packbits(flat, bitorder="little").tobytes(), LEVEL)


def decode_mask(data: bytes, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The masks (bool, read-only) of `shapes`; raises MaskBitsError for anything else."""
    names = sorted(shapes)
    sizes = [int(np.prod(shapes[n], dtype=np.int64)) for n in names]
    count = sum(sizes)
    expected = (count + 7) // 8
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, expected + 1)  # one byte more reveals a long stream
    except zlib.error as error:
        raise MaskBitsError(f"search mask is not deflate data: {error}") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        raise MaskBitsError(
            f"search mask must hold {count} bits ({expected} bytes), got a different length"
        )
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
    if bits[count:].any():
        raise MaskBitsError("search mask padding bits are not zero")
    masks: dict[str, np.ndarray] = {}
    start = 0
    for name, size in zip(names, sizes, strict=True):
        mask = bits[start : start + size].astype(np.bool_).reshape(shapes[name])
        mask.flags.writeable = False
        masks[name] = mask
        start += size
    return masks
