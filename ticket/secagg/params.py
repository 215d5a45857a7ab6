"""Secure aggregation's parameters, and the two numbers derived from them: the neighbourhood
degree of a cohort and a node's reconstruction threshold."""

import math
import struct
from dataclasses import dataclass

from ticket.secagg.errors import ParamsError

_WIRE = struct.Struct("<dIddI")  # clip, levels, threshold fraction, degree factor, complete_up_to
PARAMS_BYTES = _WIRE.size
MAX_MODULUS_BITS = 32  # masked values travel and add as uint32
MAX_LEVELS = 2**24  # the most quantisation levels q a round may use


@dataclass(frozen=True)
class SecAggParams:
    """What server and nodes must agree on (the server sends them in every key bundle).

    clip: inputs are clipped to [-clip, clip] before quantisation.
    levels: q, quantisation levels (values 0..q-1); n * q must stay <= 2^32.
    threshold_fraction: a node's secrets need ceil(fraction * m) of the m shares held in its
        closed neighbourhood (itself and its neighbours), and always more than m / 2, so no
        server can collect a threshold of both a node's self-mask and its pairwise-mask key.
    degree_factor: c in k = 2 * ceil(c * log2(n) / 2) neighbours (an even k, O(log n)).
    complete_up_to: cohorts of at most this many nodes use the complete graph.
    """

    clip: float
    levels: int = 2**14
    threshold_fraction: float = 2 / 3
    degree_factor: float = 2.0
    complete_up_to: int = 8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ParamsError(f"clip must be a positive finite number, got {self.clip}")
        if isinstance(self.levels, bool) or not 2 <= self.levels <= MAX_LEVELS:
            raise ParamsError(f"levels must be an integer in 2..2^24, got {self.levels}")
        if not 0.5 < self.threshold_fraction <= 1:
            raise ParamsError(
                f"threshold_fraction must be in (0.5, 1], got {self.threshold_fraction}"
            )
        if not (math.isfinite(self.degree_factor) and 0 < self.degree_factor <= 64):
            raise ParamsError(f"degree_factor must be in (0, 64], got {self.degree_factor}")
        if not 1 <= self.complete_up_to <= 2**16:
            raise ParamsError(f"complete_up_to must be 1..65536, got {self.complete_up_to}")

    def to_bytes(self) -> bytes:
        return _WIRE.pack(
            self.clip,
            self.levels,
            self.threshold_fraction,
            self.degree_factor,
            self.complete_up_to,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "SecAggParams":
        if len(data) != PARAMS_BYTES:
            raise ParamsError(f"encoded parameters are {PARAMS_BYTES} bytes, got {len(data)}")
        clip, levels, fraction, factor, complete = _WIRE.unpack(data)
        return cls(clip, levels, fraction, factor, complete)

    def degree(self, cohort_size: int) -> int:
        """Neighbours per node in a cohort of n: n - 1 (complete) for small n, else an even
        k = 2 * ceil(c * log2(n) / 2), capped at n - 1."""
        n = cohort_size
        if n <= self.complete_up_to:
            return max(n - 1, 0)
        return min(n - 1, 2 * math.ceil(self.degree_factor * math.log2(n) / 2))

    def threshold(self, holders: int) -> int:
        """Shares needed out of `holders` (a closed neighbourhood's size): a strict majority,
        and at least ceil(threshold_fraction * holders)."""
        if holders < 1:
            raise ParamsError(f"a neighbourhood holds at least the node itself, got {holders}")
        return max(holders // 2 + 1, math.ceil(self.threshold_fraction * holders - 1e-9))

    def modulus_bits(self, cohort_size: int) -> int:
        """ceil(log2(n * q)): the width of a masked value, 2^bits >= n * q > any sum of n inputs."""
        bits = max(1, (cohort_size * self.levels - 1).bit_length())
        if bits > MAX_MODULUS_BITS:
            raise ParamsError(
                f"n * q = {cohort_size} * {self.levels} needs {bits} bits; at most "
                f"{MAX_MODULUS_BITS} are supported (lower the levels or the cohort)"
            )
        return bits
