"""The pruning step of `fed-imp` and `fed-oneshot`: prune the fleet's aggregate, rewind to W_k.

After a level's federated rounds the server holds only the aggregate (the mean of the
devices' updates, or under secure aggregation their sum read as a mean): the weights ranked
here are the fleet's, never one device's. How many go per layer is ticket.prune.METHODS'
`schedule` ("imp": a fixed fraction of what remains, the output layer at half rate; "oneshot":
straight to the target); which go is the magnitude pruner of `scope` (layer-wise or global).
"""

from collections.abc import Mapping

import numpy as np
import torch

from ticket.masks import Mask
from ticket.prune import METHODS, PRUNERS

SCOPES = {"layerwise": "magnitude-layerwise", "global": "magnitude-global"}


def next_mask(
    aggregate: Mapping[str, np.ndarray],
    mask: Mapping[str, np.ndarray],
    *,
    schedule: str,
    scope: str,
    rates: Mapping[str, float],
    target: float,
    level: int,
) -> dict[str, np.ndarray] | None:
    """The mask of level `level + 1`, or None when the search is done (at the target).

    `aggregate` holds the level's final global weights (float32, full shapes), `mask` the
    level's mask (bool), `rates` the per-layer pruning rates (ticket.prune.PruningRates).
    """
    current: Mask = {
        name: torch.from_numpy(np.array(m, dtype=np.bool_)) for name, m in mask.items()
    }
    fractions = METHODS[schedule](current, rates, target, level)
    if fractions is None:
        return None
    weights = {name: torch.from_numpy(np.array(aggregate[name])) for name in mask}
    pruned = PRUNERS[SCOPES[scope]](weights, current, fractions, torch.Generator())
    return {name: pruned[name].numpy() for name in mask}


def rewind(w_k: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """W_k with the pruned weights zeroed: the weights a level (and the ticket) starts from."""
    return {
        name: (value * mask[name]).astype(np.float32) if name in mask else value.copy()
        for name, value in w_k.items()
    }


def hamming(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Fraction of prunable positions where two masks differ (early-bird's mask distance)."""
    total = sum(m.size for m in a.values())
    differ = sum(int(np.count_nonzero(a[name] != b[name])) for name in a)
    return differ / total if total else 0.0
