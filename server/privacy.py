"""Distributed differential privacy's server side: the run's plan and its privacy accountant.

The devices add the noise (ticket/secagg/privacy.py); the server tells them the clip norm C
and their noise share sigma = z C / sqrt(t), and charges every round whose sum it unmasked at
that round's effective noise multiplier z_eff = sqrt(survivors) sigma / C. The accountant is
Google's `dp-accounting` (the RDP accountant TensorFlow Privacy and Flower use): each round a
Gaussian mechanism, composed over the run. No amplification by sampling is claimed, because
the server chooses and sees each round's cohort; the epsilon bounds every device, including
one that took part in every round. An aborted round releases nothing and costs nothing.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ticket.runconfig import TrainingSettings
from ticket.secagg.privacy import device_noise_std

# RDP orders: dp-accounting's defaults, plus the large ones that tight small-epsilon runs need.
_ORDERS = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    *(64, 80, 96, 128, 192, 256, 384, 512, 1024),
)


@dataclass(frozen=True)
class DpPlan:
    """Run config's [dp-noise-multiplier], [dp-clip-norm] and [dp-delta], checked (defaults:
    ticket/runconfig.py's)."""

    noise_multiplier: float  # z: the planned noise of a round's sum, in units of C
    clip_norm: float  # C: each device's update (local - global) is clipped to this L2 norm
    delta: float = TrainingSettings.dp_delta  # the delta epsilon is reported at

    @classmethod
    def of(cls, run: TrainingSettings) -> "DpPlan":
        return cls(run.dp_noise_multiplier, run.dp_clip_norm, run.dp_delta)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"dp-noise-multiplier must be > 0, got {self.noise_multiplier}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"dp-clip-norm must be > 0, got {self.clip_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {self.delta}")

    def noise_std(self, min_survivors: int) -> float:
        return device_noise_std(self.noise_multiplier, self.clip_norm, min_survivors)


def epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """(epsilon, delta)-DP of the composition of Gaussian mechanisms with these multipliers."""
    if not noise_multipliers:
        return 0.0
    import dp_accounting  # only runs with differential privacy on load it
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant(orders=list(_ORDERS))
    for z in noise_multipliers:
        accountant.compose(dp_accounting.GaussianDpEvent(z))
    return float(accountant.get_epsilon(delta))


def charged_rounds(lines: Iterable[Mapping[str, Any]]) -> list[float]:
    """The noise multipliers of the rounds a run log says were released under DP."""
    found = []
    for line in sorted(lines, key=lambda line: int(line["round"])):
        secagg = line.get("secagg")
        dp = secagg.get("dp") if isinstance(secagg, dict) else None
        if isinstance(dp, dict) and isinstance(dp.get("noise_multiplier"), int | float):
            found.append(float(dp["noise_multiplier"]))
    return found
