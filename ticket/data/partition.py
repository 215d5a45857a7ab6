"""Federated partitioners: a dataset's rows -> one sorted index array per client, seeded.

Every scheme returns `num_clients` sorted int64 arrays of row indices; no row goes to two
clients, and every row goes to some client. Randomness comes only from
`numpy.random.Generator(PCG64(seed))`, so a (scheme, labels, num_clients, seed, options) tuple
gives the same split on every machine with the same numpy feature release (numpy keeps PCG64's
bits stable but may change how a Generator method uses them, NEP 19; tests pin one split).
"""

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ticket.errors import TicketError
from ticket.registry import Registry

IndexArray = npt.NDArray[np.int64]
Partitioner = Callable[..., list[IndexArray]]

# Resampling bound for Dirichlet splits that leave a client under `min_size` rows.
DIRICHLET_MAX_TRIES = 100


class PartitionError(TicketError, ValueError):
    """A partition was asked for with options it cannot satisfy; the message names the option."""


def natural(
    labels: IndexArray, sites: IndexArray | None, num_clients: int, rng: np.random.Generator
) -> list[IndexArray]:
    """One client per natural site present (heart hospitals), in site-index order."""
    if sites is None:
        raise PartitionError("natural: needs sites (the natural site index of every row)")
    present = np.unique(sites)
    if num_clients != present.size:
        raise PartitionError(
            f"natural: num_clients must equal the {present.size} sites present, got {num_clients}"
        )
    return [np.flatnonzero(sites == site) for site in present]


def iid(
    labels: IndexArray, sites: IndexArray | None, num_clients: int, rng: np.random.Generator
) -> list[IndexArray]:
    """A seeded shuffle cut into `num_clients` parts whose sizes differ by at most one."""
    return list(np.array_split(rng.permutation(labels.size), num_clients))


def dirichlet(
    labels: IndexArray,
    sites: IndexArray | None,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float,
    min_size: int = 1,
) -> list[IndexArray]:
    """Label skew (Hsu et al. 2019): each class's rows go to clients in proportions ~ Dir(alpha).

    Small alpha gives each client few labels; large alpha tends to IID. A draw that leaves some
    client under `min_size` rows is redrawn, at most `DIRICHLET_MAX_TRIES` times.
    """
    alpha = _positive_number("dirichlet", "alpha", alpha)
    min_size = _whole_number("dirichlet", "min_size", min_size, minimum=0)
    if min_size * num_clients > labels.size:
        raise PartitionError(
            f"dirichlet: min_size={min_size} for {num_clients} clients needs "
            f"{min_size * num_clients} rows, but there are {labels.size}"
        )
    _, counts = np.unique(labels, return_counts=True)
    by_class = np.split(np.argsort(labels, kind="stable"), np.cumsum(counts)[:-1])
    for _ in range(DIRICHLET_MAX_TRIES):
        chunks: list[list[IndexArray]] = [[] for _ in range(num_clients)]
        for rows in by_class:
            proportions = rng.dirichlet(np.full(num_clients, alpha))  # [num_clients]
            cuts = (np.cumsum(proportions)[:-1] * rows.size).astype(np.int64)
            for client, chunk in enumerate(np.split(rng.permutation(rows), cuts)):
                chunks[client].append(chunk)
        clients = [np.concatenate(parts) for parts in chunks]
        if min(client.size for client in clients) >= min_size:
            return clients
    raise PartitionError(
        f"dirichlet: no draw in {DIRICHLET_MAX_TRIES} gave each of {num_clients} clients "
        f"min_size={min_size} rows at alpha={alpha}; "
        "raise alpha, lower min_size or use fewer clients"
    )


def shards(
    labels: IndexArray,
    sites: IndexArray | None,
    num_clients: int,
    rng: np.random.Generator,
    *,
    shards_per_client: int = 2,
) -> list[IndexArray]:
    """FedAvg's pathological split (McMahan et al. 2017): sort by label, cut into equal shards
    (sizes differ by at most one row), deal `shards_per_client` shards to each client."""
    per_client = _whole_number("shards", "shards_per_client", shards_per_client, minimum=1)
    num_shards = num_clients * per_client
    if num_shards > labels.size:
        raise PartitionError(
            f"shards: num_clients * shards_per_client = {num_shards} shards, "
            f"more than the {labels.size} rows"
        )
    pieces = np.array_split(np.argsort(labels, kind="stable"), num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, per_client)
    return [np.concatenate([pieces[shard] for shard in hand]) for hand in dealt]


PARTITIONERS: Registry[Partitioner] = Registry(
    "partitioner",
    {
        "natural": natural,
        "iid": iid,
        "dirichlet": dirichlet,
        "shards": shards,
    },
)


def partition(
    scheme: str,
    labels: npt.ArrayLike,
    *,
    num_clients: int,
    seed: int,
    sites: npt.ArrayLike | None = None,
    **options: Any,
) -> list[IndexArray]:
    """Split rows (one label per row) among `num_clients` clients with the named scheme.

    `sites` (one natural site index per row) is used by "natural" and ignored by the others,
    so a caller can always pass `dataset.site_train`.
    """
    partitioner = PARTITIONERS[scheme]
    _check_options(scheme, partitioner, options)
    label_array = _index_array("labels", labels)
    site_array = None if sites is None else _index_array("sites", sites)
    if site_array is not None and site_array.shape != label_array.shape:
        raise PartitionError(
            f"sites: expected one site per row ({label_array.size}), got {site_array.size}"
        )
    clients = _whole_number(scheme, "num_clients", num_clients, minimum=1)
    if clients > label_array.size:
        raise PartitionError(
            f"{scheme}: num_clients={clients} is more than the {label_array.size} rows"
        )
    rng = np.random.Generator(np.random.PCG64(_whole_number(scheme, "seed", seed, minimum=0)))
    parts = partitioner(label_array, site_array, clients, rng, **options)
    return [np.sort(part).astype(np.int64) for part in parts]


def _check_options(scheme: str, partitioner: Partitioner, options: dict[str, Any]) -> None:
    params = inspect.signature(partitioner).parameters.values()
    accepted = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    required = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise PartitionError(f"{scheme}: unknown option(s) {', '.join(unknown)}; it takes: {takes}")
    missing = [name for name in required if name not in options]
    if missing:
        raise PartitionError(f"{scheme}: missing option(s) {', '.join(missing)}")


def _index_array(name: str, values: npt.ArrayLike) -> IndexArray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise PartitionError(
            f"{name}: expected a 1-D integer array, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


def _whole_number(scheme: str, name: str, value: object, *, minimum: int) -> int:
    # bool is an int subclass; num_clients=True is a bug, not one client.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise PartitionError(f"{scheme}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_number(scheme: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise PartitionError(f"{scheme}: {name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise PartitionError(f"{scheme}: {name} must be a finite number > 0, got {value!r}")
    return number
