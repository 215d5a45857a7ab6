"""Float vectors <-> integers 0..q-1: clipping, unbiased stochastic rounding, and the way back
for a sum of n quantised vectors.

x in [-c, c] maps to level (x + c) / (2c) * (q - 1), rounded down or up at random with
E[level] exact, so the decoded sum is an unbiased estimate of the clipped sum. One level is
delta = 2c / (q - 1); each value's rounding error is below delta, so a sum of n vectors is
off by less than n * delta per coordinate (plus whatever clipping removed).

choose_quantization picks q per round from the cohort size instead of a fixed q: the rounding
errors of n devices are independent and zero-mean, so the mean's error shrinks as 1 / sqrt(n)
and a large cohort needs few levels (while the modulus, which must hold the sum, grows as n q).
"""

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ticket.secagg.bitpack import packed_size
from ticket.secagg.errors import ParamsError
from ticket.secagg.params import MAX_LEVELS, MAX_MODULUS_BITS, SecAggParams

TAIL_PROBABILITY = 1e-6  # QuantizationChoice.tail_error holds for all coordinates but this often

Levels = npt.NDArray[np.uint32]
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class QuantizationError:
    max_abs: float
    mean_abs: float


@dataclass(frozen=True)
class QuantizationChoice:
    """The fewest levels that meet a target error for one cohort, and what they cost. Errors
    are of the decoded mean update, per coordinate, as a fraction of the clip."""

    levels: int  # q
    modulus_bits: int  # ceil(log2(n q)): the width of each masked value on the wire
    masked_bytes: int  # one device's masked vector, bit-packed
    error: float  # the target's measure at this q: RMS (stochastic) or the hard bound
    tail_error: float  # every coordinate within this, but with probability TAIL_PROBABILITY


def choose_quantization(
    cohort_size: int,
    *,
    clip: float,
    length: int,
    target_error: float,
    stochastic: bool = True,
    mean_weight: float = 1.0,
) -> QuantizationChoice:
    """The fewest levels q whose decoded mean of `cohort_size` vectors of `length` values in
    [-clip, clip] is off by at most `target_error` * clip per coordinate; ParamsError, saying
    which limit stops it, when no q within MAX_LEVELS and a 32-bit modulus can.

    With delta = 2 clip / (q - 1) and the mean over n devices whose weights average w
    (weighting.py; 1 when every device has at least the weight cap's examples):
    - stochastic (the protocol's unbiased rounding, independent across devices): each value's
      rounding error has variance <= delta^2 / 4, so the mean's RMS error is at most
      delta / (2 w sqrt(n)), i.e. q - 1 >= 1 / (target w sqrt(n));
    - not stochastic (nothing assumed of the rounding; deterministic rounding's errors can all
      point one way): a hard bound, |error| < delta / w, i.e. q - 1 >= 2 / (target w).
    `tail_error` is Hoeffding's bound over all `length` coordinates at TAIL_PROBABILITY
    (stochastic), or the hard bound. The weight's own rounding rescales the mean by a relative
    error of the same order, which matters only where |mean| is near the clip.
    """
    n = cohort_size
    SecAggParams(clip=clip)  # the clip's own check
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ParamsError(f"a secure cohort has at least 2 devices, got {n!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ParamsError(f"vector length must be a positive integer, got {length!r}")
    if not (math.isfinite(target_error) and target_error > 0):
        raise ParamsError(
            f"target error must be a positive fraction of the clip, got {target_error}"
        )
    if not 0 < mean_weight <= 1:
        raise ParamsError(f"mean weight must be in (0, 1], got {mean_weight}")
    spread = 1 / math.sqrt(n) if stochastic else 2.0  # error of the mean in steps of 2/(q-1)
    levels = max(2, math.ceil(spread / (target_error * mean_weight) - 1e-9) + 1)
    if levels > MAX_LEVELS:
        raise ParamsError(
            f"a mean error of {target_error:g} x clip over {n} devices needs {levels} "
            f"quantisation levels; at most {MAX_LEVELS} (2^24) are supported: raise the "
            "target error, or take more devices per round"
        )
    bits = max(1, (n * levels - 1).bit_length())
    if bits > MAX_MODULUS_BITS:
        raise ParamsError(
            f"a mean error of {target_error:g} x clip over {n} devices needs q = {levels} "
            f"levels, and a sum of {n} x {levels} needs {bits} bits; a masked value holds at "
            f"most {MAX_MODULUS_BITS}: raise the target error, or take fewer devices per round"
        )
    relative_step = 2 / (levels - 1)  # delta / clip
    if stochastic:
        error = relative_step / (2 * mean_weight * math.sqrt(n))
        tail = relative_step * math.sqrt(math.log(2 * length / TAIL_PROBABILITY) / (2 * n))
        tail /= mean_weight
    else:
        error = tail = relative_step / mean_weight
    return QuantizationChoice(levels, bits, packed_size(length, bits), error, tail)


def level_step(params: SecAggParams) -> float:
    """delta = 2c / (q - 1): the value of one quantisation level."""
    return 2 * params.clip / (params.levels - 1)


def quantize(values: npt.ArrayLike, params: SecAggParams, rng: np.random.Generator) -> Levels:
    """uint32 [k] in 0..q-1 from float [k]; NaN or Inf raise (they would poison the sum)."""
    x = np.asarray(values, dtype=np.float64)  # [k]
    if x.ndim != 1:
        raise ParamsError(f"expected a 1-D vector, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ParamsError("vector holds NaN or Inf")
    c, top = params.clip, params.levels - 1
    scaled = (np.clip(x, -c, c) + c) * (top / (2 * c))  # [k], in [0, q - 1]
    # floor(s + u), u ~ U[0, 1): ceil(s) with probability frac(s), so E = s exactly.
    levels = np.floor(scaled + rng.random(x.size))
    return np.minimum(levels, top).astype(np.uint32)


def dequantize_sum(total: npt.ArrayLike, count: int, params: SecAggParams) -> Floats:
    """float32 [k]: the sum of `count` decoded vectors, from the exact sum of their levels."""
    levels = np.asarray(total, dtype=np.float64)
    if count < 0:
        raise ParamsError(f"count must be >= 0, got {count}")
    return (levels * level_step(params) - count * params.clip).astype(np.float32)


def dequantize_mean(total: npt.ArrayLike, count: int, params: SecAggParams) -> Floats:
    """float32 [k]: the mean of `count` decoded vectors."""
    if count < 1:
        raise ParamsError(f"a mean needs count >= 1, got {count}")
    return (dequantize_sum(total, count, params).astype(np.float64) / count).astype(np.float32)


def quantization_error(estimate: npt.ArrayLike, exact: npt.ArrayLike) -> QuantizationError:
    """Max and mean absolute error of a decoded sum (or mean) against the exact float one."""
    diff = np.abs(np.asarray(estimate, np.float64) - np.asarray(exact, np.float64))
    if diff.size == 0:
        return QuantizationError(0.0, 0.0)
    return QuantizationError(float(diff.max()), float(diff.mean()))
