"""Distributed differential privacy under secure aggregation: each device clips its update and
adds its share of Gaussian noise, so the sum the server unmasks carries the whole noise.

DP-FedAvg (McMahan et al., ICLR 2018) adds N(0, (z C)^2) to the sum of updates whose L2 norm
is clipped to C, for a noise multiplier z. Under secure aggregation no single party may hold
the noise, so each device adds its share (the distributed Gaussian of Kairouz et al., ICML
2021, here in the continuous form):

    x_u = clip(d_u, C) + N(0, sigma^2 I),   sigma = z C / sqrt(t)

where t is the fewest vectors a round may be summed from (the secure round aborts below it).
With s >= t survivors the sum holds N(0, s sigma^2 I), i.e. noise multiplier
z_eff = sqrt(s) sigma / C >= z: dropouts can only add privacy relative to the plan, never
take it away, and the accountant charges each round at its z_eff. The server divides by the
survivor count (every device weighs 1: example counts are not released under DP).

Sensitivity. Adding or removing one device changes the sum of clipped updates by at most C in
L2, so each released round is a Gaussian mechanism with noise multiplier z_eff; rounds
compose (server/privacy.py runs the RDP accountant). The cohort is chosen and seen by the
server, so no amplification by sampling is claimed.

What this does not cover (README "Limits"): the noise is continuous but the secure sum is
over stochastically rounded values (Kairouz et al. give the exact discrete analysis); values
beyond the quantiser's clip c saturate, so c must leave room for the noise
(`saturation_margin`); and a device trusts the server's choice of z and C.
"""

import math

import numpy as np
import numpy.typing as npt

from ticket.secagg.errors import ParamsError

Floats = npt.NDArray[np.float32]


def device_noise_std(noise_multiplier: float, clip_norm: float, min_survivors: int) -> float:
    """sigma = z C / sqrt(t): each device's share of the round's noise."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ParamsError(f"noise multiplier must be positive, got {noise_multiplier}")
    _check_clip_norm(clip_norm)
    if min_survivors < 1:
        raise ParamsError(f"min_survivors must be >= 1, got {min_survivors}")
    return noise_multiplier * clip_norm / math.sqrt(min_survivors)


def effective_noise_multiplier(noise_std: float, survivors: int, clip_norm: float) -> float:
    """z_eff = sqrt(s) sigma / C: the noise multiplier of a sum over `survivors` vectors."""
    _check_clip_norm(clip_norm)
    return math.sqrt(survivors) * noise_std / clip_norm


def clip_l2(delta: npt.ArrayLike, clip_norm: float) -> tuple[Floats, float]:
    """(delta scaled to L2 norm at most C, its norm before clipping)."""
    _check_clip_norm(clip_norm)
    d = np.asarray(delta, dtype=np.float64)  # [k]
    if d.ndim != 1 or not np.all(np.isfinite(d)):
        raise ParamsError("expected a 1-D update of finite values")
    norm = float(np.linalg.norm(d))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return (d * scale).astype(np.float32), norm


def privatize(
    delta: npt.ArrayLike, *, clip_norm: float, noise_std: float, rng: np.random.Generator
) -> Floats:
    """clip(delta, C) + N(0, sigma^2 I), float32 [k]. `rng` must be the device's own secret
    randomness (never a seed the server could know): the noise is what hides the update."""
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ParamsError(f"noise std must be >= 0, got {noise_std}")
    clipped, _ = clip_l2(delta, clip_norm)
    noise = rng.normal(0.0, noise_std, size=clipped.shape)  # float64 [k]
    return (clipped + noise).astype(np.float32)


def saturation_margin(quantiser_clip: float, noise_std: float) -> float:
    """c / sigma: how many of a device's noise standard deviations the quantiser's range spans.
    Below ~4, a visible share of noisy values saturates at +-c and biases the mean (a clipped
    update's coordinates are small beside its noise: about C / sqrt(k) each)."""
    if noise_std == 0:
        return math.inf
    return quantiser_clip / noise_std


def _check_clip_norm(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ParamsError(f"clip norm must be a positive finite number, got {clip_norm}")
