"""The round graph and the parameters it is sized by."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticket.secagg import ParamsError, SecAggParams, neighbour_graph, viable_subset
from ticket.secagg.graph import Graph

PARAMS = SecAggParams(clip=1.0)


def _is_connected(graph: Graph) -> bool:
    start = next(iter(graph))
    seen, frontier = {start}, [start]
    while frontier:
        for v in graph[frontier.pop()]:
            if v not in seen:
                seen.add(v)
                frontier.append(v)
    return len(seen) == len(graph)


@settings(max_examples=40, deadline=None)
@given(
    cohort=st.sets(st.integers(1, 2**64 - 1), min_size=1, max_size=80),
    run_id=st.integers(0, 2**64 - 1),
    round=st.integers(0, 2**32 - 1),
)
def test_the_graph_is_symmetric_regular_and_connected(
    cohort: set[int], run_id: int, round: int
) -> None:
    graph = neighbour_graph(cohort, run_id=run_id, round=round, params=PARAMS)
    k = PARAMS.degree(len(cohort))

    assert set(graph) == cohort
    for u, neighbours in graph.items():
        assert u not in neighbours
        assert list(neighbours) == sorted(set(neighbours))
        assert len(neighbours) == k
        assert all(u in graph[v] for v in neighbours)
    assert _is_connected(graph)


def test_small_cohorts_get_the_complete_graph() -> None:
    for n in range(1, PARAMS.complete_up_to + 1):
        graph = neighbour_graph(range(1, n + 1), run_id=0, round=0, params=PARAMS)
        assert all(len(neighbours) == n - 1 for neighbours in graph.values())


@pytest.mark.parametrize(("n", "k"), [(9, 8), (20, 10), (100, 14), (1000, 20), (10**5, 34)])
def test_the_degree_grows_like_log_n(n: int, k: int) -> None:
    assert PARAMS.degree(n) == k
    assert k <= 2 * math.ceil(PARAMS.degree_factor * math.log2(n) / 2)


def test_everyone_derives_the_same_graph_whatever_the_order() -> None:
    cohort = list(range(50, 90))
    graph = neighbour_graph(cohort, run_id=1, round=2, params=PARAMS)
    assert graph == neighbour_graph(reversed(cohort), run_id=1, round=2, params=PARAMS)
    assert graph != neighbour_graph(cohort, run_id=1, round=3, params=PARAMS)
    assert graph != neighbour_graph(cohort, run_id=2, round=2, params=PARAMS)


@pytest.mark.parametrize("cohort", [[1, 1], [0, 1], [2**64], [True]])
def test_bad_cohorts_are_refused(cohort: list[int]) -> None:
    with pytest.raises(ParamsError):
        neighbour_graph(cohort, run_id=0, round=0, params=PARAMS)


@pytest.mark.parametrize(("m", "t"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (7, 5), (11, 8)])
def test_the_threshold_is_a_strict_majority_and_two_thirds(m: int, t: int) -> None:
    assert PARAMS.threshold(m) == t
    assert 2 * t > m


def test_a_majority_threshold_fraction_still_needs_a_strict_majority() -> None:
    params = SecAggParams(clip=1.0, threshold_fraction=0.51)
    assert [params.threshold(m) for m in (2, 4, 10)] == [2, 3, 6]


@pytest.mark.parametrize(
    ("n", "q", "bits"), [(1, 2, 1), (5, 2**14, 17), (1000, 2**14, 24), (2, 2**10, 11)]
)
def test_the_modulus_holds_the_sum_of_n_inputs(n: int, q: int, bits: int) -> None:
    params = SecAggParams(clip=1.0, levels=q)
    assert params.modulus_bits(n) == bits
    assert 2 ** (bits - 1) < n * q <= 2**bits


def test_a_modulus_wider_than_32_bits_is_refused() -> None:
    with pytest.raises(ParamsError, match="32"):
        SecAggParams(clip=1.0, levels=2**24).modulus_bits(2**9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip": 0.0},
        {"clip": float("inf")},
        {"clip": 1.0, "levels": 1},
        {"clip": 1.0, "threshold_fraction": 0.5},
        {"clip": 1.0, "threshold_fraction": 1.01},
        {"clip": 1.0, "degree_factor": 0.0},
        {"clip": 1.0, "complete_up_to": 0},
    ],
)
def test_params_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ParamsError):
        SecAggParams(**kwargs)


def test_params_round_trip_through_bytes() -> None:
    params = SecAggParams(clip=0.25, levels=300, threshold_fraction=0.75, degree_factor=3.0)
    assert SecAggParams.from_bytes(params.to_bytes()) == params
    with pytest.raises(ParamsError):
        SecAggParams.from_bytes(params.to_bytes()[:-1])


def test_viable_subset_drops_nodes_that_lost_their_share_holders() -> None:
    graph = neighbour_graph(range(1, 8), run_id=0, round=0, params=PARAMS)  # complete, t = 5
    assert viable_subset(graph, [1, 2, 3, 4, 5, 6], PARAMS) == (1, 2, 3, 4, 5, 6)
    assert viable_subset(graph, [1, 2, 3, 4, 5], PARAMS) == (1, 2, 3, 4, 5)
    assert viable_subset(graph, [1, 2, 3, 4], PARAMS) == ()


def test_viable_subset_cascades_in_a_sparse_graph() -> None:
    graph = neighbour_graph(range(1, 41), run_id=0, round=0, params=PARAMS)  # k = 12, t = 9
    u = 1
    present = set(graph) - set(graph[u][:5])  # u loses 5 of its 13 holders: below 9
    survivors = viable_subset(graph, present, PARAMS)
    assert u not in survivors
    for v in survivors:
        holders = {v, *graph[v]}
        assert len(holders & set(survivors)) >= PARAMS.threshold(len(holders))
