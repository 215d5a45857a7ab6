"""The neighbour graph of a round: who masks with whom and who holds whose shares.

Built from public data only (run id, round, the announced cohort), so the server and every
node derive the same graph without a message. For a cohort of n nodes with degree k from
SecAggParams.degree: the complete graph when k = n - 1, otherwise a Harary graph H(k, n) on a
pseudorandom ring: sort the nodes by SHA-256(run id, round, node id), and join each node to the
k / 2 nearest on either side. The result is symmetric, exactly k-regular and k-connected,
and its layout changes every round, so no node keeps the same neighbours for long.
"""

import hashlib
import struct
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ticket.secagg.errors import ParamsError
from ticket.secagg.params import SecAggParams

_DOMAIN = b"ticketfleet/secagg/v1/graph\x00"
_KEY = struct.Struct("<QIQ")  # run id, round, node id
_U64_MAX = 2**64 - 1

Graph = Mapping[int, tuple[int, ...]]  # node -> its neighbours, sorted, never itself


def check_cohort(nodes: Iterable[int]) -> tuple[int, ...]:
    """The cohort as sorted, distinct node ids in 1..2^64-1 (0 is the server)."""
    ids = list(nodes)
    if any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _U64_MAX for n in ids):
        raise ParamsError(f"node ids must be integers in 1..{_U64_MAX}")
    if len(set(ids)) != len(ids):
        raise ParamsError("node ids in a cohort must be distinct")
    return tuple(sorted(ids))


def neighbour_graph(
    cohort: Iterable[int], *, run_id: int, round: int, params: SecAggParams
) -> Graph:
    """{node: sorted neighbours} for the round's cohort (see the module docstring)."""
    nodes = check_cohort(cohort)
    n = len(nodes)
    k = params.degree(n)
    if k >= n - 1:
        return MappingProxyType({u: tuple(v for v in nodes if v != u) for u in nodes})
    ring = sorted(nodes, key=lambda node: _ring_key(run_id, round, node))
    neighbours: dict[int, set[int]] = {u: set() for u in nodes}
    for i, u in enumerate(ring):
        for step in range(1, k // 2 + 1):
            v = ring[(i + step) % n]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return MappingProxyType({u: tuple(sorted(neighbours[u])) for u in nodes})


def closed_neighbourhood(graph: Graph, node: int) -> tuple[int, ...]:
    """The node and its neighbours, sorted: the holders of the node's shares."""
    return tuple(sorted((node, *graph[node])))


def viable_subset(graph: Graph, present: Iterable[int], params: SecAggParams) -> tuple[int, ...]:
    """The largest subset of `present` in which every node keeps a threshold of its share
    holders (its closed neighbourhood in the full graph) present.

    A node below that could never be unmasked, so it is dropped, which may push a neighbour
    below in turn: repeat until stable. Returns the sorted survivors (possibly none).
    """
    alive = set(present) & set(graph)
    while True:
        lost = {
            u
            for u in alive
            if len(alive.intersection(closed_neighbourhood(graph, u)))
            < params.threshold(len(graph[u]) + 1)
        }
        if not lost:
            return tuple(sorted(alive))
        alive -= lost


def _ring_key(run_id: int, round: int, node: int) -> bytes:
    return hashlib.sha256(_DOMAIN + _KEY.pack(run_id, round, node)).digest()
