"""Float vectors <-> integers 0..q-1: clipping, unbiased stochastic rounding, and the way back
for a sum of n quantised vectors.

x in [-c, c] maps to level (x + c) / (2c) * (q - 1), rounded down or up at random with
E[level] exact, so the decoded sum is an unbiased estimate of the clipped sum. One level is
delta = 2c / (q - 1); each value's rounding error is below delta, so a sum of n vectors is
off by less than n * delta per coordinate (plus whatever clipping removed).
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ticket.secagg.errors import ParamsError
from ticket.secagg.params import SecAggParams

Levels = npt.NDArray[np.uint32]
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class QuantizationError:
    max_abs: float
    mean_abs: float


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
