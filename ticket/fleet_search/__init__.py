"""Ticket search on the fleet (`mode = "find"`): the registry of search methods.

A method is one of two kinds, each a small frozen dataclass the server's search loop
(server/fleet_search.py) dispatches on:
- `DataFree`: computes the mask from the initial weights alone (SynFlow): the server runs it,
  the devices send nothing.
- `FleetPruning`: levels of ordinary federated training rounds over the current sparse network;
  after each level the aggregate is pruned by magnitude and the survivors rewound to W_k
  (`fed-imp`: a fixed fraction of what remains per level; `fed-oneshot`: one level, straight to
  the target). `schedule` names ticket.prune.METHODS' entry that says how many weights go.
  `early_bird` (`fed-early-bird`, You et al., ICLR 2020): a level ends as soon as the mask its
  aggregate would prune to stops changing from round to round (ticket.fleet_search.magnitude.
  hamming below search-early-bird-distance), instead of after all its rounds.
- `FleetSaliency`: one round in which each device sends connection saliency over the dense
  weights (SNIP, ticket.fleet_search.snip), summed under secure aggregation; the server keeps the
  most salient weights.

A new method is a file in this package plus one line in `SEARCHES`.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ticket.fleet_search.snip import saliency_mask
from ticket.registry import Registry

if TYPE_CHECKING:  # synflow is torch: imported when the server runs it, not with this registry
    from torch import nn

    from ticket.fleet_search.synflow import DataFreePruner
    from ticket.masks import Mask


@dataclass(frozen=True)
class DataFree:
    """Pruning at initialisation with no data: `prune(model, input_shape, target, iterations)`."""

    prune: "DataFreePruner"


@dataclass(frozen=True)
class FleetPruning:
    """Federated levels, each pruned by magnitude; `schedule` is a ticket.prune.METHODS name."""

    schedule: str
    early_bird: bool = False


@dataclass(frozen=True)
class FleetSaliency:
    """One round of saliency from the devices: `prune(saliency, mask, target)` keeps the best."""

    prune: Callable[
        [Mapping[str, np.ndarray], Mapping[str, np.ndarray], float], dict[str, np.ndarray]
    ]


SearchMethod = DataFree | FleetPruning | FleetSaliency


def _synflow_mask(
    model: "nn.Module", input_shape: tuple[int, ...], target: float, iterations: int
) -> "Mask":
    """ticket.fleet_search.synflow.synflow_mask, imported when called: a device reads this
    package (a search round's mask bits) without torch."""
    from ticket.fleet_search.synflow import synflow_mask

    return synflow_mask(model, input_shape, target, iterations)


SEARCHES: Registry[SearchMethod] = Registry(
    "fleet search method",
    {
        "synflow": DataFree(_synflow_mask),
        "fed-imp": FleetPruning("imp"),
        "fed-oneshot": FleetPruning("oneshot"),
        "fed-early-bird": FleetPruning("imp", early_bird=True),
        "fed-snip": FleetSaliency(saliency_mask),
    },
)
"""Every method `fleet-server find --method` accepts (run config `search-method`)."""

__all__ = ["SEARCHES", "DataFree", "FleetPruning", "FleetSaliency", "SearchMethod"]
