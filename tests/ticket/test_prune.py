import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ticket.errors import TicketError, UnknownNameError
from ticket.masks import density
from ticket.prune import (
    METHODS,
    PRUNERS,
    PruningRates,
    check_reachable,
    derive_seed,
    expected_levels,
    imp_fractions,
    magnitude_global,
    magnitude_layerwise,
    oneshot_fractions,
    random_mask_like,
    solve_fractions,
)

SHAPES = {"fc1.weight": (12, 10), "fc2.weight": (6, 12), "fc3.weight": (2, 6)}


def _weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) for n, s in SHAPES.items()}


def _full() -> dict[str, torch.Tensor]:
    return {n: torch.ones(s, dtype=torch.bool) for n, s in SHAPES.items()}


def _naive_layerwise(
    weights: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], fractions: dict[str, float]
) -> dict[str, torch.Tensor]:
    # Oracle: sort the kept magnitudes with Python's stable sort and drop the smallest.
    result = {}
    for name, keep in mask.items():
        flat_w = weights[name].reshape(-1).tolist()
        flat_keep = keep.reshape(-1).tolist()
        kept = [i for i, k in enumerate(flat_keep) if k]
        count = round(fractions[name] * len(kept))
        for i in sorted(kept, key=lambda i: abs(flat_w[i]))[:count]:
            flat_keep[i] = False
        result[name] = torch.tensor(flat_keep).reshape(keep.shape)
    return result


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.05, 0.9), levels=st.integers(1, 5))
def test_layerwise_magnitude_matches_a_naive_sort_and_masks_only_shrink(
    seed: int, rate: float, levels: int
) -> None:
    weights = _weights(seed)
    mask = _full()
    fractions = {n: rate for n in SHAPES}
    for _ in range(levels):
        pruned = magnitude_layerwise(weights, mask, fractions, torch.Generator())
        assert all(
            torch.equal(pruned[n], _naive_layerwise(weights, mask, fractions)[n]) for n in SHAPES
        )
        assert all(not (pruned[n] & ~mask[n]).any() for n in SHAPES)  # nothing revived
        mask = pruned


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rate=st.floats(0.05, 0.9),
    scope=st.sampled_from(["magnitude-layerwise", "magnitude-global"]),
)
def test_every_kept_weight_outranks_every_pruned_one(seed: int, rate: float, scope: str) -> None:
    weights = _weights(seed)
    fractions = {n: rate for n in SHAPES}
    mask = PRUNERS[scope](weights, _full(), fractions, torch.Generator())
    groups = (
        [[n] for n in SHAPES]
        if scope == "magnitude-layerwise"
        else [list(SHAPES)[:-1], [list(SHAPES)[-1]]]
    )
    for group in groups:
        kept = torch.cat([weights[n][mask[n]].abs() for n in group])
        pruned = torch.cat([weights[n][~mask[n]].abs() for n in group])
        if kept.numel() and pruned.numel():
            assert kept.min() >= pruned.max()


def test_global_prunes_as_many_as_layerwise_but_distributes_by_magnitude() -> None:
    weights = _weights(0)
    weights["fc2.weight"] = weights["fc2.weight"] * 0.01  # a layer of tiny weights
    fractions = {n: 0.5 for n in SHAPES}
    layerwise = magnitude_layerwise(weights, _full(), fractions, torch.Generator())
    global_ = magnitude_global(weights, _full(), fractions, torch.Generator())
    assert sum(int(m.sum()) for m in layerwise.values()) == sum(
        int(m.sum()) for m in global_.values()
    )
    assert int(global_["fc2.weight"].sum()) == 0  # the tiny layer gives up everything first
    assert torch.equal(global_["fc3.weight"], layerwise["fc3.weight"])  # output layer: own rate


def test_output_layer_is_pruned_at_half_rate_by_default() -> None:
    rates = PruningRates(rate=0.2).per_layer(list(SHAPES))
    assert rates == {"fc1.weight": 0.2, "fc2.weight": 0.2, "fc3.weight": 0.1}
    custom = PruningRates(rate=0.3, output_rate=0.0, layer_rates={"fc1.weight": 0.5}).per_layer(
        list(SHAPES)
    )
    assert custom == {"fc1.weight": 0.5, "fc2.weight": 0.3, "fc3.weight": 0.0}


def test_rates_reject_unknown_layers_and_bad_values() -> None:
    with pytest.raises(TicketError, match="no prunable layer named fc9"):
        PruningRates(layer_rates={"fc9.weight": 0.1}).per_layer(list(SHAPES))
    with pytest.raises(TicketError, match=r"rate must be in \[0, 1\)"):
        PruningRates(rate=1.5)


@pytest.mark.parametrize("target", [0.5, 0.2, 0.1, 0.036])
def test_imp_lands_on_the_target_density(target: float) -> None:
    rates = PruningRates().per_layer(list(SHAPES))
    weights, mask, level = _weights(1), _full(), 0
    densities = []
    while (fractions := imp_fractions(mask, rates, target, level)) is not None:
        mask = magnitude_layerwise(weights, mask, fractions, torch.Generator())
        densities.append(density(mask))
        level += 1
    assert densities == sorted(densities, reverse=True)
    assert abs(densities[-1] - target) < 0.02  # 200 weights: rounding per layer
    assert level == expected_levels(
        "imp", {n: s[0] * s[1] for n, s in SHAPES.items()}, rates, target
    )


def test_oneshot_prunes_once_straight_to_target() -> None:
    rates = PruningRates().per_layer(list(SHAPES))
    fractions = oneshot_fractions(_full(), rates, 0.1, 0)
    assert fractions is not None
    mask = magnitude_layerwise(_weights(0), _full(), fractions, torch.Generator())
    assert abs(density(mask) - 0.1) < 0.02
    assert oneshot_fractions(mask, rates, 0.1, 1) is None


def test_solve_fractions_keeps_relative_rates() -> None:
    rates = {"fc1.weight": 0.2, "fc2.weight": 0.2, "fc3.weight": 0.1}
    fractions = solve_fractions(_full(), rates, 0.5)
    assert abs(fractions["fc1.weight"] - 2 * fractions["fc3.weight"]) < 1e-9
    with pytest.raises(TicketError, match="unreachable"):
        solve_fractions(_full(), {"fc1.weight": 0.0, "fc2.weight": 0.0, "fc3.weight": 0.1}, 0.1)


def test_random_mask_like_keeps_exact_counts_and_is_seeded() -> None:
    mask = magnitude_layerwise(_weights(0), _full(), {n: 0.7 for n in SHAPES}, torch.Generator())
    a = random_mask_like(mask, torch.Generator().manual_seed(3))
    b = random_mask_like(mask, torch.Generator().manual_seed(3))
    c = random_mask_like(mask, torch.Generator().manual_seed(4))
    assert all(int(a[n].sum()) == int(mask[n].sum()) for n in SHAPES)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)
    assert not all(torch.equal(a[n], c[n]) for n in SHAPES)


def test_registries_name_valid_choices() -> None:
    with pytest.raises(UnknownNameError, match="imp, oneshot"):
        METHODS["magic"]
    with pytest.raises(UnknownNameError, match="magnitude-global"):
        PRUNERS["snip"]


def test_derive_seed_is_stable() -> None:
    assert derive_seed(0, "init") == derive_seed(0, "init")
    assert derive_seed(0, "init") != derive_seed(1, "init")
    assert derive_seed(7, "random", 3) == 557648156557000977  # pinned: tickets depend on it


SIZES = {n: s[0] * s[1] for n, s in SHAPES.items()}


@pytest.mark.parametrize("method", ["imp", "oneshot"])
def test_check_reachable_accepts_what_the_method_reaches(method: str) -> None:
    rates = PruningRates().per_layer(list(SHAPES))
    check_reachable(method, SIZES, rates, 0.1)
    check_reachable(method, SIZES, {n: 0.0 for n in SHAPES}, 1.0)  # dense: nothing to prune


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        # Every rate zero: the search would stop at once and call the dense net a ticket.
        ({"fc1.weight": 0.0, "fc2.weight": 0.0, "fc3.weight": 0.0}, "stop at 100.00%"),
        # Only the 12-weight output layer is pruned: 192 of the 204 weights can never go.
        ({"fc1.weight": 0.0, "fc2.weight": 0.0, "fc3.weight": 0.5}, "unreachable"),
    ],
)
def test_check_reachable_refuses_rates_that_stop_above_the_target(
    rates: dict[str, float], message: str
) -> None:
    with pytest.raises(TicketError, match=message):
        check_reachable("imp", SIZES, rates, 0.5)
