"""Distributed differential privacy under secure aggregation: the distributed Skellam mechanism
(Agarwal, Kairouz & Liu, NeurIPS 2021). Each device clips its update, maps it to integers and
adds its share of integer noise, so the modular sum the server unmasks carries the whole noise.

Why integers, not Gaussian noise before quantisation. Secure aggregation sums each device's
vector as integers mod 2^bits. Continuous Gaussian noise added before a device quantises its
own vector is not the Gaussian mechanism on the sum: the per-device stochastic rounding and the
clipping to the quantiser's range are applied to each noisy vector separately, so the sum of
quantised vectors is not a function of the noisy sum and its analysis does not carry over. Here
the privacy analysis is of the integers themselves:

    r_u = round(clip(d_u, C) * s)       conditional stochastic rounding, ||r_u||_2 <= D2
    x_u = r_u + Sk(mu_u)                Sk(mu) = Poisson(mu/2) - Poisson(mu/2), variance mu
    sum = sum_u x_u  mod 2^bits         what secure aggregation reveals

A sum of independent Skellam variables is Skellam, so n devices' shares make exactly
Sk(n mu_u): the released sum is the Skellam mechanism on sum_u r_u, and reducing it mod
2^bits is post-processing. Dropouts only add privacy: s >= t survivors carry Sk(s mu_u) with
mu_u planned for t. The discrete Gaussian would need an extra term because a sum of discrete
Gaussians is not one; Skellam needs none.

Sensitivity (integer domain, s = scale): the rounded vector has L2 norm at most
D2 = rounded_norm_bound(C s, length), which the device checks before it masks (a rounding
above it is drawn again: Kairouz et al. 2021's conditional rounding), and L1 norm at most
min(D2 sqrt(length), D2^2) (an integer vector's |x_i| <= x_i^2). Adjacency is zero-out: a
device's data replaced by none, its device still present (the neighbouring sum lacks only its
r_u). server/privacy.py turns (D1, D2, s mu_u) into epsilon.

The ring. A device's value at one coordinate lies in +-(D2 + NOISE_TAIL sqrt(mu_u)) but with
probability ~1e-23, so `levels` = 2 of those + 1 per device, and the modulus 2^bits >= n levels
holds any sum of n without wrap-around (the server centre-lifts it). A wrap would cost
accuracy, never privacy.
"""

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ticket.secagg.errors import ParamsError
from ticket.secagg.params import MAX_LEVELS

SCALE_PER_SQRT_LENGTH = 8.0  # C s = 8 sqrt(k): rounding inflates the sensitivity by ~0.2%
ROUNDING_BETA = math.exp(-0.5)  # each rounding exceeds D2 at most this often (then redrawn)
MAX_ROUNDING_DRAWS = 200  # exceeding D2 this many times in a row: ~1e-43, a broken sampler
NOISE_TAIL = 10.0  # a device's noise stays within this many deviations but for ~1e-23

Floats = npt.NDArray[np.float32]
Words = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class SkellamParams:
    """What a device needs to privatise its update (the server sends them with each mask
    request): clip norm C (float units), scale s (integer units per float unit), and
    noise_var mu_u (the Skellam variance per coordinate this device adds, integer units)."""

    clip_norm: float
    scale: float
    noise_var: float

    def __post_init__(self) -> None:
        _check_clip_norm(self.clip_norm)
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ParamsError(f"DP scale must be a positive finite number, got {self.scale}")
        if not (math.isfinite(self.noise_var) and self.noise_var >= 0):
            raise ParamsError(f"DP noise variance must be >= 0, got {self.noise_var}")

    @classmethod
    def plan(
        cls, *, noise_multiplier: float, clip_norm: float, length: int, min_survivors: int
    ) -> "SkellamParams":
        """The parameters whose sum over `min_survivors` devices has noise multiplier z:
        total variance (z D2)^2, split evenly across the t devices."""
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ParamsError(f"noise multiplier must be positive, got {noise_multiplier}")
        if min_survivors < 1:
            raise ParamsError(f"min_survivors must be >= 1, got {min_survivors}")
        _check_length(length)
        _check_clip_norm(clip_norm)
        scale = SCALE_PER_SQRT_LENGTH * math.sqrt(length) / clip_norm
        bound = rounded_norm_bound(clip_norm * scale, length)
        total = (noise_multiplier * bound) ** 2
        return cls(clip_norm, scale, total / min_survivors)

    def l2_sensitivity(self, length: int) -> float:
        """D2: the rounded vector's L2 norm bound, integer units."""
        return rounded_norm_bound(self.clip_norm * self.scale, length)

    def l1_sensitivity(self, length: int) -> float:
        bound = self.l2_sensitivity(length)
        return min(bound * math.sqrt(length), bound * bound)

    def levels(self, length: int) -> int:
        """Integer values one device's coordinate spans, noise tail included (odd: +-half)."""
        half = math.ceil(self.l2_sensitivity(length) + NOISE_TAIL * math.sqrt(self.noise_var))
        levels = 2 * half + 1
        if levels > MAX_LEVELS:
            raise ParamsError(
                f"a device's DP values span {levels} integers; at most {MAX_LEVELS} fit "
                "a masked value: lower dp-noise-multiplier or raise min-replies"
            )
        return levels

    def noise_multiplier(self, survivors: int, length: int) -> float:
        """z of a sum over `survivors` devices: its noise deviation in units of D2."""
        return math.sqrt(survivors * self.noise_var) / self.l2_sensitivity(length)


def rounded_norm_bound(norm: float, length: int, beta: float = ROUNDING_BETA) -> float:
    """An L2 bound on the stochastic rounding of a vector of `length` values and L2 norm at
    most `norm`, exceeded with probability at most `beta` (Kairouz, Liu & Steinke, ICML 2021):
    sqrt(norm^2 + k/4 + sqrt(2 ln(1/beta)) (norm + sqrt(k)/2)), and never above norm + sqrt(k)
    (each value moves by less than 1)."""
    _check_length(length)
    if not 0 < beta < 1:
        raise ParamsError(f"beta must be in (0, 1), got {beta}")
    k = float(length)
    hard = norm + math.sqrt(k)
    tail = math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(k) / 2)
    return min(hard, math.sqrt(norm * norm + k / 4 + tail))


def clip_l2(delta: npt.ArrayLike, clip_norm: float) -> tuple[npt.NDArray[np.float64], float]:
    """(delta scaled to L2 norm at most C, float64; its norm before clipping)."""
    _check_clip_norm(clip_norm)
    d = np.asarray(delta, dtype=np.float64)  # [k]
    if d.ndim != 1 or not np.all(np.isfinite(d)):
        raise ParamsError("expected a 1-D update of finite values")
    norm = float(np.linalg.norm(d))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return d * scale, norm


def round_within(
    values: npt.NDArray[np.float64], bound: float, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Unbiased stochastic rounding of `values` [k], drawn again until the rounded vector's
    L2 norm is at most `bound` (the sensitivity the accountant charges)."""
    low = np.floor(values)
    frac = values - low
    for _ in range(MAX_ROUNDING_DRAWS):
        rounded = (low + (rng.random(values.size) < frac)).astype(np.int64)
        if float(np.linalg.norm(rounded)) <= bound:
            return rounded
    raise ParamsError(
        f"the rounded update exceeded its L2 bound {bound:.6g} in {MAX_ROUNDING_DRAWS} draws"
    )


def skellam_noise(size: int, variance: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """int64 [size] of Sk(variance): the difference of two Poisson(variance / 2)."""
    if variance == 0:
        return np.zeros(size, np.int64)
    half = variance / 2
    return rng.poisson(half, size).astype(np.int64) - rng.poisson(half, size).astype(np.int64)


def privatize(
    update: npt.ArrayLike,
    params: SkellamParams,
    *,
    bits: int,
    rounding_rng: np.random.Generator,
    noise_rng: np.random.Generator,
) -> Words:
    """uint32 [k]: clip, scale, round within D2, add Sk(mu_u), reduce mod 2^bits.
    `noise_rng` must be the device's own secret randomness (never a seed the server could
    know): the noise is what hides the update. The rounding's may be public."""
    clipped, _ = clip_l2(update, params.clip_norm)
    bound = params.l2_sensitivity(clipped.size)
    rounded = round_within(clipped * params.scale, bound, rounding_rng)  # int64 [k]
    noisy = rounded + skellam_noise(clipped.size, params.noise_var, noise_rng)
    return (noisy & ((1 << bits) - 1)).astype(np.uint32)


def decode_sum(total: npt.ArrayLike, bits: int, scale: float) -> npt.NDArray[np.float64]:
    """float64 [k]: the signed sum, from the modular one (centre-lifted), in float units."""
    words = np.asarray(total, dtype=np.int64)  # [k] in 0..2^bits - 1
    signed = np.where(words >= 1 << (bits - 1), words - (1 << bits), words)
    return signed / scale


def _check_clip_norm(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ParamsError(f"clip norm must be a positive finite number, got {clip_norm}")


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ParamsError(f"vector length must be a positive integer, got {length!r}")
