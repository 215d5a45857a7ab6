"""Federated partitioners: disjoint, covering, seeded, and as skewed as each scheme promises."""

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ticket.data import load_dataset
from ticket.data.partition import DIRICHLET_MAX_TRIES, PARTITIONERS, PartitionError, partition
from ticket.errors import UnknownNameError

SEEDED = {"iid": {}, "dirichlet": {"alpha": 0.5}, "shards": {}}


def _shuffled_balanced(classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _assert_partition(parts: list[np.ndarray], rows: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64 and part.ndim == 1
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
    joined = np.concatenate(parts)
    assert joined.size == rows  # disjoint and covering, given the next line
    assert np.array_equal(np.sort(joined), np.arange(rows))


def _label_shares(parts: list[np.ndarray], labels: np.ndarray, classes: int) -> np.ndarray:
    counts = np.stack([np.bincount(labels[part], minlength=classes) for part in parts])
    return counts / counts.sum(axis=1, keepdims=True)  # [clients, classes]


@pytest.mark.parametrize("scheme", sorted(SEEDED))
def test_seeded_schemes_are_reproducible_and_seed_dependent(scheme: str) -> None:
    labels = _shuffled_balanced(10, 100)
    first = partition(scheme, labels, num_clients=8, seed=1, **SEEDED[scheme])
    again = partition(scheme, labels, num_clients=8, seed=1, **SEEDED[scheme])
    other = partition(scheme, labels, num_clients=8, seed=2, **SEEDED[scheme])
    _assert_partition(first, labels.size, 8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_golden_iid_split() -> None:
    # numpy may change a Generator method's stream in a feature release (NEP 19); if this
    # fails after a numpy upgrade, published splits changed with it: a conscious act.
    parts = partition("iid", np.zeros(10, dtype=np.int64), num_clients=3, seed=0)
    assert [part.tolist() for part in parts] == [[2, 4, 6, 7], [3, 5, 9], [0, 1, 8]]


def test_natural_gives_one_client_per_heart_hospital() -> None:
    heart = load_dataset("heart-uci")
    labels = heart.y_train.numpy()
    parts = partition("natural", labels, num_clients=4, seed=0, sites=heart.site_train)
    _assert_partition(parts, labels.size, 4)
    assert [part.size for part in parts] == [226, 208, 75, 134]
    for site, part in enumerate(parts):
        assert np.array_equal(part, np.flatnonzero(heart.site_train == site))
    other_seed = partition("natural", labels, num_clients=4, seed=9, sites=heart.site_train)
    assert all(np.array_equal(a, b) for a, b in zip(parts, other_seed, strict=True))


def test_natural_needs_sites_and_one_client_per_site() -> None:
    labels, sites = np.zeros(6, dtype=np.int64), np.array([0, 0, 2, 2, 5, 5])
    assert len(partition("natural", labels, num_clients=3, seed=0, sites=sites)) == 3
    with pytest.raises(PartitionError, match="num_clients must equal the 3 sites"):
        partition("natural", labels, num_clients=2, seed=0, sites=sites)
    with pytest.raises(PartitionError, match="needs sites"):
        partition("natural", labels, num_clients=3, seed=0)


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = partition("iid", np.zeros(103, dtype=np.int64), num_clients=10, seed=0)
    assert {part.size for part in parts} == {10, 11}


def test_shards_give_each_client_two_labels_on_sorted_balanced_labels() -> None:
    labels = np.repeat(np.arange(10), 6000)  # MNIST-sized, 300-row shards never straddle labels
    parts = partition("shards", labels, num_clients=100, seed=0)
    _assert_partition(parts, labels.size, 100)
    assert {part.size for part in parts} == {600}
    assert max(np.unique(labels[part]).size for part in parts) <= 2


def test_shards_per_client_sets_the_label_count() -> None:
    labels = _shuffled_balanced(10, 600)
    parts = partition("shards", labels, num_clients=20, seed=3, shards_per_client=1)
    assert all(np.unique(labels[part]).size == 1 for part in parts)


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_near_uniform() -> None:
    labels = _shuffled_balanced(10, 1000)
    skewed = partition("dirichlet", labels, num_clients=10, seed=0, alpha=0.05)
    uniform = partition("dirichlet", labels, num_clients=10, seed=0, alpha=1000.0)
    _assert_partition(skewed, labels.size, 10)
    _assert_partition(uniform, labels.size, 10)
    # Total variation distance between each client's label mix and the global (uniform) one.
    skewed_tv = 0.5 * np.abs(_label_shares(skewed, labels, 10) - 0.1).sum(axis=1)
    uniform_tv = 0.5 * np.abs(_label_shares(uniform, labels, 10) - 0.1).sum(axis=1)
    assert skewed_tv.mean() > 0.5
    assert uniform_tv.max() < 0.05
    sizes = np.array([part.size for part in uniform])
    assert np.all(np.abs(sizes - 1000) < 100)


def test_dirichlet_guarantees_min_size() -> None:
    labels = _shuffled_balanced(10, 100)
    parts = partition("dirichlet", labels, num_clients=20, seed=0, alpha=0.1, min_size=10)
    assert min(part.size for part in parts) >= 10


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    # Two classes at alpha=0.001 land on about two of 50 clients, whatever the draw.
    labels = _shuffled_balanced(2, 50)
    with pytest.raises(PartitionError, match=f"no draw in {DIRICHLET_MAX_TRIES}.*min_size=2"):
        partition("dirichlet", labels, num_clients=50, seed=0, alpha=0.001, min_size=2)


@pytest.mark.parametrize(
    ("scheme", "kwargs", "message"),
    [
        ("dirichlet", {"alpha": 0}, "alpha must be a finite number > 0"),
        ("dirichlet", {"alpha": -1.0}, "alpha must be a finite number > 0"),
        ("dirichlet", {"alpha": float("inf")}, "alpha must be a finite number > 0"),
        ("dirichlet", {"alpha": "0.5"}, "alpha must be a number"),
        ("dirichlet", {"alpha": True}, "alpha must be a number"),
        ("dirichlet", {}, "missing option.* alpha"),
        ("dirichlet", {"alpha": 1.0, "min_size": -1}, "min_size must be an integer >= 0"),
        ("dirichlet", {"alpha": 1.0, "min_size": 11}, "min_size=11 for 10 clients"),
        ("iid", {"alpha": 1.0}, "iid: unknown option.* alpha; it takes: no options"),
        ("shards", {"shard": 2}, "unknown option.* shard; it takes: shards_per_client"),
        ("shards", {"shards_per_client": 0}, "shards_per_client must be an integer >= 1"),
        ("shards", {"shards_per_client": 11}, "110 shards, more than the 100 rows"),
        ("iid", {"num_clients": 0}, "num_clients must be an integer >= 1"),
        ("iid", {"num_clients": 101}, "num_clients=101 is more than the 100 rows"),
        ("iid", {"num_clients": 2.0}, "num_clients must be an integer"),
        ("iid", {"seed": -1}, "seed must be an integer >= 0"),
        ("iid", {"labels": np.zeros((10, 10), dtype=np.int64)}, "labels: expected a 1-D integer"),
        ("iid", {"labels": np.zeros(100)}, "labels: expected a 1-D integer"),
        ("iid", {"sites": np.zeros(99, dtype=np.int64)}, "sites: expected one site per row"),
    ],
)
def test_bad_arguments_name_the_option(scheme: str, kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "labels": np.zeros(100, dtype=np.int64),
        "num_clients": 10,
        "seed": 0,
    }
    arguments.update(kwargs)
    with pytest.raises(PartitionError, match=message):
        partition(scheme, arguments.pop("labels"), **arguments)


def test_unknown_scheme_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="dirichlet, iid, natural, shards"):
        partition("pathological", np.zeros(4, dtype=np.int64), num_clients=2, seed=0)
    assert sorted(PARTITIONERS) == ["dirichlet", "iid", "natural", "shards"]


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, np.ndarray, int, dict[str, Any]]:
    scheme = draw(st.sampled_from(["iid", "dirichlet", "shards", "natural"]))
    labels = np.array(draw(st.lists(st.integers(0, 5), min_size=2, max_size=120)), np.int64)
    options: dict[str, Any] = {}
    if scheme == "natural":
        options["sites"] = np.array(
            draw(st.lists(st.integers(0, 4), min_size=labels.size, max_size=labels.size))
        )
        num_clients = np.unique(options["sites"]).size
    else:
        most = labels.size // 2 if scheme == "shards" else labels.size
        num_clients = draw(st.integers(1, min(most, 12)))
    if scheme == "dirichlet":
        options.update(alpha=draw(st.floats(0.01, 100.0)), min_size=0)
    return scheme, labels, num_clients, options


@settings(max_examples=60, deadline=None)
@given(_requests(), st.integers(0, 2**32))
def test_every_scheme_is_disjoint_covering_and_seeded(
    request: tuple[str, np.ndarray, int, dict[str, Any]], seed: int
) -> None:
    scheme, labels, num_clients, options = request
    parts = partition(scheme, labels, num_clients=num_clients, seed=seed, **options)
    _assert_partition(parts, labels.size, num_clients)
    again = partition(scheme, labels, num_clients=num_clients, seed=seed, **options)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
