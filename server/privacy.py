"""Distributed differential privacy's server side: the run's plan and its privacy accountant.

The devices add the noise (ticket/secagg/privacy.py, the distributed Skellam mechanism); the
server tells them the clip norm C, the integer scale and each device's noise variance, planned
so that a sum over t = min-survivors devices has noise multiplier z, and charges every round
whose sum it unmasked as one Skellam release of that round's actual noise (s >= t survivors
carry more).

Accounting is in Renyi DP over integer orders. A Skellam release of total variance mu with
integer-domain sensitivities D1, D2 costs (Agarwal, Kairouz & Liu, NeurIPS 2021, Thm. 3.5)

    eps(a) <= a D2^2 / (2 mu) + min(((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))

the Gaussian mechanism's a / (2 z^2) plus a discretisation surcharge that vanishes as mu grows.

Sampling. With `dp-sampling-rate` q > 0 the server draws each round's cohort by Poisson
sampling, every online device independently with probability q (so none is in a round with
probability above q), and the accountant applies amplification by sampling: Zhu & Wang's
(ICML 2019, Thm. 6) bound on the Poisson-subsampled RDP of any mechanism, here the Skellam
one. It bounds the privacy of a device against anyone who sees the models; the server itself
sees who was sampled, so against the server amplification claims nothing (q = 0 claims none).
The rounds compose by adding RDP; dp-accounting turns the total into (epsilon, delta).
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ticket.runconfig import TrainingSettings
from ticket.secagg.privacy import SkellamParams

ORDERS = (*range(2, 129), 160, 192, 256, 384, 512)  # integer orders: Zhu & Wang's bound needs them


@dataclass(frozen=True)
class DpPlan:
    """Run config's [dp-noise-multiplier], [dp-clip-norm], [dp-delta], [dp-sampling-rate] and
    [dp-epsilon-budget], checked (defaults: ticket/runconfig.py's)."""

    noise_multiplier: float  # z: the planned noise of a round's sum, in units of D2
    clip_norm: float  # C: each device's update (local - global) is clipped to this L2 norm
    delta: float = TrainingSettings.dp_delta  # the delta epsilon is reported at
    sampling_rate: float = TrainingSettings.dp_sampling_rate  # q: Poisson sampling; 0 = none
    epsilon_budget: float = TrainingSettings.dp_epsilon_budget  # refuse to spend more; 0 = no cap

    @classmethod
    def of(cls, run: TrainingSettings) -> "DpPlan":
        return cls(
            run.dp_noise_multiplier,
            run.dp_clip_norm,
            run.dp_delta,
            run.dp_sampling_rate,
            run.dp_epsilon_budget,
        )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"dp-noise-multiplier must be > 0, got {self.noise_multiplier}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"dp-clip-norm must be > 0, got {self.clip_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {self.delta}")
        if not 0 <= self.sampling_rate <= 1:
            raise ValueError(f"dp-sampling-rate must be in [0, 1], got {self.sampling_rate}")
        if not (math.isfinite(self.epsilon_budget) and self.epsilon_budget >= 0):
            raise ValueError(f"dp-epsilon-budget must be >= 0, got {self.epsilon_budget}")

    def skellam(self, length: int, min_survivors: int) -> SkellamParams:
        """What each device adds, for vectors of `length` summed from >= `min_survivors`."""
        return SkellamParams.plan(
            noise_multiplier=self.noise_multiplier,
            clip_norm=self.clip_norm,
            length=length,
            min_survivors=min_survivors,
        )

    def release(self, params: SkellamParams, length: int, survivors: int) -> "Release":
        """One round's released sum over `survivors` noisy vectors."""
        return Release(
            variance=survivors * params.noise_var,
            l2=params.l2_sensitivity(length),
            l1=params.l1_sensitivity(length),
            rate=self.sampling_rate or 1.0,
        )

    def check_budget(
        self, spent: Sequence["Release"], rounds_left: int, planned: "Release"
    ) -> float:
        """The epsilon the whole run would reach if each remaining round released exactly the
        planned noise (the least a released round carries); ValueError over the budget."""
        projected = epsilon([*spent, *([planned] * rounds_left)], self.delta)
        if self.epsilon_budget and projected > self.epsilon_budget:
            raise ValueError(
                f"dp-epsilon-budget: {len(spent)} rounds spent and {rounds_left} to go reach "
                f"epsilon {projected:.3g} at delta {self.delta:g}, over the budget of "
                f"{self.epsilon_budget:g}: raise dp-noise-multiplier, lower num-rounds or "
                "dp-sampling-rate"
            )
        return projected


@dataclass(frozen=True)
class Release:
    """One released round: Skellam noise of total `variance` (integer units) on a sum whose
    sensitivities are `l2` and `l1`, its cohort Poisson-sampled at `rate` (1: not sampled)."""

    variance: float
    l2: float
    l1: float
    rate: float = 1.0

    def to_json(self) -> dict[str, float]:
        return {"variance": self.variance, "l2": self.l2, "l1": self.l1, "rate": self.rate}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Release":
        try:
            values = [float(data[key]) for key in ("variance", "l2", "l1", "rate")]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a DP release needs variance, l2, l1 and rate: {error}") from None
        variance, l2, l1, rate = values
        if not (variance > 0 and l2 > 0 and l1 > 0 and 0 < rate <= 1):
            raise ValueError(f"not a DP release: {dict(data)}")
        return cls(variance, l2, l1, rate)

    @property
    def noise_multiplier(self) -> float:
        return math.sqrt(self.variance) / self.l2


def skellam_rdp(order: int, *, variance: float, l2: float, l1: float) -> float:
    """RDP at `order` of one Skellam release (module docstring)."""
    a, mu = order, variance
    surcharge = min(((2 * a - 1) * l2 * l2 + 6 * l1) / (4 * mu * mu), 3 * l1 / (2 * mu))
    return a * l2 * l2 / (2 * mu) + surcharge


def subsampled_rdp(order: int, rate: float, rdp: Sequence[float]) -> float:
    """Zhu & Wang (2019) Thm. 6: RDP at integer `order` of a mechanism whose RDP at orders
    2..order is rdp[0..order-2], applied to a Poisson sample at `rate`; never above the
    mechanism's own RDP (sampling only helps)."""
    a, q = order, rate
    if q >= 1:
        return rdp[a - 2]
    log_q, log_1q = math.log(q), math.log1p(-q)
    terms = [
        (a - 1) * log_1q + math.log1p((a - 1) * q),  # (1-q)^(a-1) (a q - q + 1)
        _log_comb(a, 2) + 2 * log_q + (a - 2) * log_1q + rdp[0],
    ]
    for j in range(3, a + 1):
        terms.append(
            math.log(3) + _log_comb(a, j) + j * log_q + (a - j) * log_1q + (j - 1) * rdp[j - 2]
        )
    top = max(terms)
    bound = (top + math.log(sum(math.exp(t - top) for t in terms))) / (a - 1)
    return min(bound, rdp[a - 2])


@lru_cache(maxsize=256)
def release_rdp(release: Release) -> tuple[float, ...]:
    """RDP of one release at every order in ORDERS."""
    top = max(ORDERS)
    plain = [
        skellam_rdp(a, variance=release.variance, l2=release.l2, l1=release.l1)
        for a in range(2, top + 1)
    ]
    return tuple(subsampled_rdp(a, release.rate, plain) for a in ORDERS)


def epsilon(releases: Iterable[Release], delta: float) -> float:
    """(epsilon, delta)-DP of the composition of these releases."""
    total = np.zeros(len(ORDERS))
    count = 0
    for release in releases:
        total += release_rdp(release)
        count += 1
    if count == 0:
        return 0.0
    from dp_accounting.rdp import rdp_privacy_accountant  # only DP runs load it

    eps, _ = rdp_privacy_accountant.compute_epsilon(list(ORDERS), total, delta)
    return float(eps)


def charged_rounds(lines: Iterable[Mapping[str, Any]]) -> list[Release]:
    """The releases of the rounds a run log says were released under DP, in round order."""
    found = []
    for line in sorted(lines, key=lambda line: int(line["round"])):
        secagg = line.get("secagg")
        dp = secagg.get("dp") if isinstance(secagg, dict) else None
        if isinstance(dp, dict) and isinstance(dp.get("release"), dict):
            found.append(Release.from_json(dp["release"]))
    return found


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
