"""ticket/fleet_search: SynFlow against a naive path sum, the fleet pruning step, the state file."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ticket.errors import TicketError, UnknownNameError
from ticket.fleet_search import SEARCHES, DataFree, FleetPruning
from ticket.fleet_search.magnitude import hamming, next_mask, rewind
from ticket.fleet_search.state import (
    SearchState,
    SearchStateError,
    latest_state,
    save_state,
    state_path,
)
from ticket.fleet_search.synflow import synflow_mask, synflow_scores
from ticket.masks import density, full_mask
from ticket.models import build_model
from ticket.prune import PruningRates

SHAPES = {"fc1.weight": (12, 10), "fc2.weight": (6, 12), "fc3.weight": (2, 6)}
RATES = PruningRates(rate=0.2).per_layer(list(SHAPES))


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))


def _naive_scores(first: np.ndarray, second: np.ndarray) -> dict[str, np.ndarray]:
    # Oracle: R = sum over paths i -> j -> k of |W2[k,j]| |W1[j,i]| (all-ones input, ReLU
    # the identity on positive values); a weight's score is the flow through it.
    a, b = np.abs(first), np.abs(second)  # [4, 3], [2, 4]
    s1 = np.zeros_like(a)
    for j in range(a.shape[0]):
        for i in range(a.shape[1]):
            s1[j, i] = a[j, i] * sum(b[k, j] for k in range(b.shape[0]))
    s2 = np.zeros_like(b)
    for k in range(b.shape[0]):
        for j in range(b.shape[1]):
            s2[k, j] = b[k, j] * sum(a[j, i] for i in range(a.shape[1]))
    return {"0.weight": s1, "2.weight": s2}


def test_synflow_scores_match_a_naive_path_sum() -> None:
    model = _tiny(3)
    probe = model.double()
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_()
    original = {n: p.detach().clone() for n, p in probe.named_parameters()}
    scores = synflow_scores(
        probe, original, full_mask(probe), torch.ones(1, 3, dtype=torch.float64)
    )
    expected = _naive_scores(original["0.weight"].numpy(), original["2.weight"].numpy())
    for name, value in expected.items():
        np.testing.assert_allclose(scores[name].numpy(), value, rtol=1e-12)


def test_synflow_one_step_prunes_the_lowest_naive_scores() -> None:
    model = _tiny(5)
    weights = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    mask = synflow_mask(model, (3,), 0.5, iterations=1)
    naive = _naive_scores(weights["0.weight"], weights["2.weight"])
    flat = np.concatenate([naive[n].reshape(-1) for n in ("0.weight", "2.weight")])
    kept = np.concatenate([mask[n].numpy().reshape(-1) for n in ("0.weight", "2.weight")])
    assert kept.sum() == 10  # half of 20
    assert flat[kept].min() >= flat[~kept].max()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), target=st.floats(0.02, 1.0), iterations=st.integers(1, 20))
def test_synflow_lands_on_target_and_leaves_the_model_alone(
    seed: int, target: float, iterations: int
) -> None:
    model = build_model("heart-mlp", {"in_features": 10, "hidden": [12, 6], "num_classes": 2}, seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = synflow_mask(model, (10,), target, iterations)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(total * target)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name])


def test_synflow_keeps_every_layer_connected_at_high_sparsity() -> None:
    # Layer collapse is what iterating guards against: each layer keeps some weight.
    model = build_model("heart-mlp", {"in_features": 10, "hidden": [64, 32], "num_classes": 2}, 0)
    mask = synflow_mask(model, (10,), 0.01, iterations=100)
    assert all(int(m.sum()) > 0 for m in mask.values())


def test_synflow_refuses_a_target_outside_zero_one() -> None:
    with pytest.raises(TicketError, match=r"\(0, 1\]"):
        synflow_mask(_tiny(0), (3,), 0.0, 10)
    with pytest.raises(TicketError, match=r"\(0, 1\]"):
        synflow_mask(_tiny(0), (3,), 1.5, 10)


def test_unknown_method_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="fed-imp"):
        SEARCHES["fed-magic"]
    assert isinstance(SEARCHES["synflow"], DataFree)
    assert isinstance(SEARCHES["fed-imp"], FleetPruning)


def _aggregate(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scope=st.sampled_from(["layerwise", "global"]))
def test_fed_imp_masks_only_shrink_kept_outrank_pruned_and_land_on_target(
    seed: int, scope: str
) -> None:
    mask = {n: np.ones(s, dtype=np.bool_) for n, s in SHAPES.items()}
    target, level = 0.1, 0
    while True:
        aggregate = _aggregate(seed + level)  # every level trains to a new aggregate
        pruned = next_mask(
            aggregate, mask, schedule="imp", scope=scope, rates=RATES, target=target, level=level
        )
        if pruned is None:
            break
        for name in SHAPES:
            assert not (pruned[name] & ~mask[name]).any()  # only shrinks
        ranked = [n for n in SHAPES if scope == "layerwise" or n == "fc3.weight"]
        for name in ranked:  # within what competed, every kept weight outranks every pruned one
            gone = mask[name] & ~pruned[name]
            if gone.any() and pruned[name].any():
                assert (
                    np.abs(aggregate[name][pruned[name]]).min()
                    >= np.abs(aggregate[name][gone]).max()
                )
        mask, level = pruned, level + 1
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.size for m in mask.values())
    assert level > 1
    assert kept <= target * total + len(SHAPES) / 2
    assert kept >= target * total - len(SHAPES) / 2


def test_fed_oneshot_prunes_once_to_target_with_the_output_layer_at_half_rate() -> None:
    mask = {n: np.ones(s, dtype=np.bool_) for n, s in SHAPES.items()}
    first = next_mask(
        _aggregate(1),
        mask,
        schedule="oneshot",
        scope="layerwise",
        rates=RATES,
        target=0.3,
        level=0,
    )
    assert first is not None
    assert density({n: torch.from_numpy(m) for n, m in first.items()}) == pytest.approx(
        0.3, abs=0.02
    )
    assert first["fc3.weight"].mean() > first["fc1.weight"].mean()  # output at half rate
    assert (
        next_mask(
            _aggregate(2),
            first,
            schedule="oneshot",
            scope="layerwise",
            rates=RATES,
            target=0.3,
            level=1,
        )
        is None
    )


def test_rewind_zeroes_pruned_weights_and_keeps_the_rest_of_w_k() -> None:
    w_k = {**_aggregate(4), "fc1.bias": np.ones(12, dtype=np.float32)}
    mask = {n: np.random.default_rng(0).random(s) < 0.5 for n, s in SHAPES.items()}
    rewound = rewind(w_k, mask)
    for name in SHAPES:
        assert (rewound[name][~mask[name]] == 0).all()
        np.testing.assert_array_equal(rewound[name][mask[name]], w_k[name][mask[name]])
    np.testing.assert_array_equal(rewound["fc1.bias"], w_k["fc1.bias"])


def test_hamming_counts_differing_positions() -> None:
    a = {"w": np.array([True, True, False, False])}
    b = {"w": np.array([True, False, False, True])}
    assert hamming(a, b) == 0.5
    assert hamming(a, a) == 0.0


def _state(level: int, settings: dict[str, object]) -> SearchState:
    return SearchState(
        level=level,
        mask={n: np.random.default_rng(level).random(s) < 0.5 for n, s in SHAPES.items()},
        w_k=_aggregate(level),
        settings=settings,
        rounds=3 * level,
        bytes_up=1000,
        bytes_down=2000,
        nodes=(101, 102),
        history=({"level": 0, "density": 1.0},),
    )


def test_state_round_trips_and_the_latest_level_wins(tmp_path: Path) -> None:
    settings = {"method": "fed-imp", "target": 0.1}
    assert latest_state(tmp_path / "none", settings) is None
    save_state(tmp_path, _state(1, settings))
    saved = _state(2, settings)
    save_state(tmp_path, saved)
    loaded = latest_state(tmp_path, settings)
    assert loaded is not None and loaded.level == 2
    assert (loaded.rounds, loaded.bytes_up, loaded.nodes) == (6, 1000, (101, 102))
    for name in SHAPES:
        np.testing.assert_array_equal(loaded.mask[name], saved.mask[name])
        np.testing.assert_array_equal(loaded.w_k[name], saved.w_k[name])
        assert loaded.mask[name].dtype == np.bool_


def test_state_from_other_settings_or_damaged_is_refused(tmp_path: Path) -> None:
    save_state(tmp_path, _state(1, {"method": "fed-imp", "target": 0.1}))
    with pytest.raises(SearchStateError, match="target"):
        latest_state(tmp_path, {"method": "fed-imp", "target": 0.2})
    path = state_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SearchStateError, match="not a usable search state"):
        latest_state(tmp_path, {"method": "fed-imp", "target": 0.1})


def test_a_state_from_before_a_setting_was_added_resumes_and_one_that_lost_a_setting_not(
    tmp_path: Path,
) -> None:
    save_state(tmp_path, _state(1, {"method": "fed-imp", "target": 0.1}))
    now = {"method": "fed-imp", "target": 0.1, "local_schedule": {"lr": 1.0}}
    loaded = latest_state(tmp_path, now)  # written before local_schedule was a setting
    assert loaded is not None and loaded.level == 1
    with pytest.raises(SearchStateError, match=r"other settings \(target\)"):
        latest_state(tmp_path, {"method": "fed-imp"})  # a setting it ran with is gone


# ---------------------------------------------------------------- the registry and the wire mask


def test_the_run_config_lists_every_search_method() -> None:
    from ticket.runconfig import SEARCH_METHODS

    assert tuple(sorted(SEARCHES)) == SEARCH_METHODS


@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
@settings(max_examples=40, deadline=None)
def test_mask_bits_round_trip(seed: int, keep: float) -> None:
    from ticket.fleet_search.mask_bits import decode_mask, encode_mask

    rng = np.random.default_rng(seed)
    masks = {name: rng.random(shape) < keep for name, shape in SHAPES.items()}
    decoded = decode_mask(encode_mask(masks), SHAPES)
    for name, mask in masks.items():
        np.testing.assert_array_equal(decoded[name], mask)
        assert not decoded[name].flags.writeable


def test_a_sparse_mask_travels_in_less_than_its_bits() -> None:
    from ticket.fleet_search.mask_bits import encode_mask

    shapes = {"fc1.weight": (300, 784)}
    mask = {"fc1.weight": np.random.default_rng(0).random(shapes["fc1.weight"]) < 0.05}
    assert len(encode_mask(mask)) < 0.5 * 300 * 784 / 8


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not deflate", "not deflate data"),
        (__import__("zlib").compress(b"\xff" * 19), "must hold 156 bits"),  # one byte short
        (__import__("zlib").compress(b"\xff" * 21), "must hold 156 bits"),  # one byte long
        (__import__("zlib").compress(b"\xff" * 10**7), "must hold 156 bits"),  # a deflate bomb
        (__import__("zlib").compress(b"\xff" * 20) + b"x", "must hold 156 bits"),  # trailing
        (__import__("zlib").compress(b"\xff" * 20), "padding bits"),
    ],
)
def test_bad_mask_bits_are_refused(data: bytes, error: str) -> None:
    from ticket.fleet_search.mask_bits import MaskBitsError, decode_mask

    shapes = {"a": (12, 13)}  # 156 bits: 19.5 bytes, so 20 with 4 padding bits
    with pytest.raises(MaskBitsError, match=error):
        decode_mask(data, shapes)


# ---------------------------------------------------------------- fed-snip


def test_connection_saliency_is_grad_times_weight_scaled_to_the_largest() -> None:
    from ticket.fleet_search.snip import connection_saliency

    model = _tiny(0)
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    mask = {
        "0.weight": torch.ones(4, 3, dtype=torch.bool),
        "2.weight": torch.ones(2, 4, dtype=torch.bool),
    }
    mask["0.weight"][0, 0] = False
    scores, loss = connection_saliency(model, mask, x, y, scale=0.25)

    reference = _tiny(0)
    expected_loss = nn.functional.cross_entropy(reference(x), y)
    expected_loss.backward()  # type: ignore[no-untyped-call]
    raw = {n: (p.grad * p).abs() * mask[n] for n, p in reference.named_parameters()}
    top = max(float(r.max()) for r in raw.values())
    for name, score in scores.items():
        torch.testing.assert_close(score, raw[name] * 0.25 / top)
    assert float(scores["0.weight"][0, 0]) == 0.0  # pruned: no saliency
    assert max(float(s.max()) for s in scores.values()) == pytest.approx(0.25)
    assert loss == pytest.approx(float(expected_loss), rel=1e-5)


def test_saliency_mask_keeps_the_top_and_every_layer() -> None:
    from ticket.fleet_search.snip import saliency_mask

    mask = {name: np.ones(shape, np.bool_) for name, shape in SHAPES.items()}
    rng = np.random.default_rng(1)
    saliency = {name: rng.random(shape) for name, shape in SHAPES.items()}
    saliency["fc3.weight"] *= 1e-6  # the output layer would lose everything to a global cut
    kept = saliency_mask(saliency, mask, 0.1)
    total = sum(m.size for m in mask.values())
    assert sum(int(k.sum()) for k in kept.values()) in {round(0.1 * total), round(0.1 * total) + 1}
    assert kept["fc3.weight"].sum() == 1  # the guard
    threshold = min(saliency[n][kept[n]].min() for n in ("fc1.weight", "fc2.weight"))
    for name in ("fc1.weight", "fc2.weight"):
        assert (saliency[name][~kept[name]] <= threshold).all()


def test_saliency_mask_refuses_a_non_finite_aggregate() -> None:
    from ticket.fleet_search.snip import saliency_mask

    mask = {name: np.ones(shape, np.bool_) for name, shape in SHAPES.items()}
    saliency = {name: np.ones(shape) for name, shape in SHAPES.items()}
    saliency["fc2.weight"][0, 0] = np.nan
    with pytest.raises(TicketError, match=r"fc2\.weight is not finite"):
        saliency_mask(saliency, mask, 0.5)
