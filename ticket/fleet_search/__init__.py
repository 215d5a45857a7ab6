"""Ticket search on the fleet (`mode = "find"`): the registry of search methods.

A method is one of two kinds, each a small frozen dataclass the server's search loop
(server/fleet_search.py) dispatches on:
- `DataFree`: computes the mask from the initial weights alone (SynFlow): the server runs it,
  the devices send nothing.
- `FleetPruning`: levels of ordinary federated training rounds over the current sparse network;
  after each level the aggregate is pruned by magnitude and the survivors rewound to W_k
  (`fed-imp`: a fixed fraction of what remains per level; `fed-oneshot`: one level, straight to
  the target). `schedule` names ticket.prune.METHODS' entry that says how many weights go.

A new method is a file in this package plus one line in `SEARCHES`.
"""

from dataclasses import dataclass

from ticket.fleet_search.synflow import DataFreePruner, synflow_mask
from ticket.registry import Registry


@dataclass(frozen=True)
class DataFree:
    """Pruning at initialisation with no data: `prune(model, input_shape, target, iterations)`."""

    prune: DataFreePruner


@dataclass(frozen=True)
class FleetPruning:
    """Federated levels, each pruned by magnitude; `schedule` is a ticket.prune.METHODS name."""

    schedule: str


SearchMethod = DataFree | FleetPruning

SEARCHES: Registry[SearchMethod] = Registry(
    "fleet search method",
    {
        "synflow": DataFree(synflow_mask),
        "fed-imp": FleetPruning("imp"),
        "fed-oneshot": FleetPruning("oneshot"),
    },
)
"""Every method `fleet-server find --method` accepts (run config `search-method`)."""

__all__ = ["SEARCHES", "DataFree", "FleetPruning", "SearchMethod"]
