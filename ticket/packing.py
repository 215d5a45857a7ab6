"""A ticket's trainable values as one flat float32 vector, laid out the same way on both ends."""

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ticket.bundle import Ticket
from ticket.codec import Kind, decode_vector
from ticket.errors import CodecError

if TYPE_CHECKING:  # numpy only at run time: the device packs without torch
    import torch

Vector = npt.NDArray[np.float32]


# eq=False: field-wise == would compare numpy arrays (ambiguous), and a Mapping is unhashable.
@dataclass(frozen=True, eq=False)
class PackLayout:
    """Which entries of which parameters travel, and in what order.

    Parameters go in name order. A masked (prunable) parameter contributes its kept entries in
    row-major order, the order of its `.values` in the bundle; any other parameter contributes
    every entry. No indices travel: sender and receiver derive the layout from the same ticket.
    """

    names: tuple[str, ...]  # every parameter, sorted by name
    shapes: tuple[tuple[int, ...], ...]  # shapes[i] is the full shape of names[i]
    masks: Mapping[str, np.ndarray]  # bool, full shape, for the prunable parameters only
    _sizes: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise CodecError(f"layout has {len(self.names)} names but {len(self.shapes)} shapes")
        if list(self.names) != sorted(set(self.names)):
            raise CodecError("layout names must be sorted and unique")
        for shape in self.shapes:
            if not all(isinstance(n, int) and n >= 0 for n in shape):
                raise CodecError(f"layout shape {list(shape)} is not a list of sizes")
        full_shapes = dict(zip(self.names, self.shapes, strict=True))
        masks: dict[str, np.ndarray] = {}
        for name in sorted(self.masks):
            mask = self.masks[name]
            if name not in full_shapes:
                raise CodecError(f"mask {name!r} names no parameter of the layout")
            if mask.dtype != np.bool_ or mask.shape != full_shapes[name]:
                raise CodecError(
                    f"mask {name!r} must be bool of shape {list(full_shapes[name])}, "
                    f"got {mask.dtype} of shape {list(mask.shape)}"
                )
            # A private read-only copy: a caller editing its mask must not move the layout.
            masks[name] = np.array(mask, dtype=np.bool_, order="C")
            masks[name].flags.writeable = False
        sizes = tuple(
            int(np.count_nonzero(masks[name])) if name in masks else math.prod(shape)
            for name, shape in full_shapes.items()
        )
        object.__setattr__(self, "masks", MappingProxyType(masks))
        object.__setattr__(self, "_sizes", sizes)

    @classmethod
    def from_ticket(cls, ticket: Ticket) -> "PackLayout":
        return cls.from_masks({n: w.shape for n, w in ticket.weights.items()}, ticket.masks)

    @classmethod
    def from_masks(
        cls, shapes: Mapping[str, tuple[int, ...]], masks: Mapping[str, np.ndarray]
    ) -> "PackLayout":
        """The layout of a model with these parameter shapes; unmasked parameters are dense."""
        names = tuple(sorted(shapes))
        return cls(names, tuple(tuple(int(n) for n in shapes[name]) for name in names), masks)

    @property
    def size(self) -> int:
        """n: kept prunable entries plus every entry of the dense parameters."""
        return sum(self._sizes)

    @property
    def segment_sizes(self) -> tuple[int, ...]:
        """Values per parameter, in `names` order (one int8 scale each on the wire)."""
        return self._sizes

    def pack(self, weights: "Mapping[str, np.ndarray | torch.Tensor]") -> Vector:
        """float32 [size]; entries where a mask is False are ignored, whatever they hold."""
        missing = sorted(set(self.names) - set(weights))
        unexpected = sorted(set(weights) - set(self.names))
        if missing or unexpected:
            raise CodecError(
                f"weights do not fit the layout: missing {missing}, unexpected {unexpected}"
            )
        segments: list[Vector] = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            array = _as_float32(weights[name])
            if array.shape != shape:
                raise CodecError(
                    f"weight {name!r} has shape {list(array.shape)}, the layout {list(shape)}"
                )
            mask = self.masks.get(name)
            segments.append(array[mask] if mask is not None else array.reshape(-1))
        if not segments:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(segments)  # [size], a fresh array

    def unpack(self, vector: np.ndarray) -> dict[str, Vector]:
        """Full-shape float32 arrays (fresh, writable), exactly +0.0 where a mask is False."""
        vector = np.asarray(vector)
        if vector.ndim != 1 or vector.shape[0] != self.size:
            raise CodecError(
                f"packed vector has shape {list(vector.shape)}, the layout needs [{self.size}]"
            )
        weights: dict[str, Vector] = {}
        offset = 0
        for name, shape, count in zip(self.names, self.shapes, self._sizes, strict=True):
            segment = vector[offset : offset + count]  # [count]
            offset += count
            mask = self.masks.get(name)
            if mask is None:
                weights[name] = np.array(segment, dtype=np.float32).reshape(shape)
            else:
                full = np.zeros(shape, dtype=np.float32)
                full[mask] = segment
                weights[name] = full
        return weights

    def decode_model(self, payload: bytes, *, ticket_id: str, server_round: int) -> Vector:
        """float32 [size] from a global model's codec message (ticket/codec.py, kind MODEL),
        which must be of `ticket_id`'s round `server_round` and of this layout's length."""
        return decode_vector(
            payload,
            kind=Kind.MODEL,
            ticket_id=ticket_id,
            round=server_round,
            length=self.size,
            segment_sizes=self.segment_sizes,
        )

    def unpack_torch(self, vector: np.ndarray) -> "dict[str, torch.Tensor]":
        import torch

        return {name: torch.from_numpy(array) for name, array in self.unpack(vector).items()}


def _as_float32(value: "np.ndarray | torch.Tensor") -> Vector:
    # A tensor exists only once torch is imported, so a process without torch never asks.
    torch_module = sys.modules.get("torch")
    if torch_module is not None and isinstance(value, torch_module.Tensor):
        # detach/cpu/float first: .numpy() refuses grad-tracking, GPU and bfloat16 tensors.
        tensor: torch.Tensor = value
        return tensor.detach().to(device="cpu", dtype=torch_module.float32).numpy()
    return np.asarray(value, dtype=np.float32)
