"""PackLayout: round trips against dense tensors, the bundle's value order, and bad input."""

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ticket.bundle import Ticket, build_ticket
from ticket.errors import CodecError
from ticket.manifest import Manifest, measure_density
from ticket.masks import prunable_names
from ticket.models import build_model
from ticket.packing import PackLayout

MODEL_ARGS = {"in_features": 6, "hidden": [5]}  # fc1 [5, 6] + [5], fc2 [2, 5] + [2]


def heart_ticket(seed: int = 0) -> Ticket:
    """A real ticket: heart-mlp 6-5-2 at its seed-0 init, with a random mask of about half."""
    model = build_model("heart-mlp", MODEL_ARGS, seed=0)
    rng = np.random.default_rng(seed)
    params = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    masks = {name: rng.random(params[name].shape) < 0.5 for name in prunable_names(model)}
    weights = {name: w * masks[name] if name in masks else w for name, w in params.items()}
    manifest: dict[str, Any] = {
        "format_version": 1,
        "model": {"name": "heart-mlp", "args": MODEL_ARGS},
        "data": {"name": "heart-uci"},
        "method": {"name": "random"},
        "rewind_step": 0,
        "density": measure_density(masks),
        "metrics": {},
        "parent": None,
        "created_at": "2025-01-31T12:00:00Z",
    }
    return build_ticket(Manifest.from_json(manifest), masks, weights)


def dense_weights(layout: PackLayout, seed: int = 1) -> dict[str, np.ndarray]:
    """Nonzero everywhere, pruned entries included: pack must drop them."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.normal(size=shape).astype(np.float32) + 3.0
        for name, shape in zip(layout.names, layout.shapes, strict=True)
    }


@pytest.fixture(scope="module")
def ticket() -> Ticket:
    return heart_ticket()


def test_layout_of_a_ticket_lists_every_parameter_sorted(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)

    kept = {name: int(mask.sum()) for name, mask in ticket.masks.items()}
    assert layout.names == ("fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight")
    assert layout.shapes == ((5,), (5, 6), (2,), (2, 5))
    assert set(layout.masks) == {"fc1.weight", "fc2.weight"}
    assert layout.segment_sizes == (5, kept["fc1.weight"], 2, kept["fc2.weight"])
    assert layout.size == kept["fc1.weight"] + kept["fc2.weight"] + 5 + 2


def test_unpack_of_pack_is_the_dense_weights_times_the_mask(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)
    weights = dense_weights(layout)

    vector = layout.pack(weights)
    unpacked = layout.unpack(vector)

    assert vector.dtype == np.float32 and vector.shape == (layout.size,)
    for name, weight in weights.items():
        mask = ticket.masks.get(name, np.ones(weight.shape, dtype=bool))
        assert unpacked[name].dtype == np.float32
        np.testing.assert_array_equal(unpacked[name], weight * mask)
        assert not np.signbit(unpacked[name][~mask]).any()  # exactly +0.0 where pruned


def test_pack_order_is_name_then_row_major_kept_entries(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)
    weights = dense_weights(layout)
    expected = [  # the naive oracle: walk every entry, keep what the mask keeps
        weights[name][index]
        for name in sorted(weights)
        for index in np.ndindex(weights[name].shape)
        if name not in ticket.masks or ticket.masks[name][index]
    ]

    np.testing.assert_array_equal(layout.pack(weights), np.array(expected, dtype=np.float32))


def test_pack_of_the_tickets_weights_is_the_bundles_values(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)

    segments = np.split(layout.pack(ticket.weights), np.cumsum(layout.segment_sizes)[:-1])

    for name, segment in zip(layout.names, segments, strict=True):
        stored = ticket.weights[name]
        values = stored[ticket.masks[name]] if name in ticket.masks else stored.reshape(-1)
        np.testing.assert_array_equal(segment, values)


def test_a_model_and_its_ticket_derive_the_same_layout(ticket: Ticket) -> None:
    model = build_model("heart-mlp", MODEL_ARGS, seed=7)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}

    from_model = PackLayout.from_masks(shapes, ticket.masks)
    from_ticket = PackLayout.from_ticket(ticket)

    assert from_model.names == from_ticket.names
    assert from_model.shapes == from_ticket.shapes
    assert from_model.segment_sizes == from_ticket.segment_sizes
    weights = dense_weights(from_ticket)
    np.testing.assert_array_equal(from_model.pack(weights), from_ticket.pack(weights))


def test_pack_takes_torch_tensors_with_grad_and_other_float_dtypes(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)
    weights = dense_weights(layout)
    tensors = {
        n: torch.from_numpy(w.astype(np.float64)).requires_grad_() for n, w in weights.items()
    }

    np.testing.assert_array_equal(layout.pack(tensors), layout.pack(weights))


def test_unpack_torch_matches_unpack(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)
    vector = layout.pack(dense_weights(layout))

    tensors = layout.unpack_torch(vector)
    arrays = layout.unpack(vector)

    assert list(tensors) == list(layout.names)
    for name, tensor in tensors.items():
        assert tensor.dtype == torch.float32
        np.testing.assert_array_equal(tensor.numpy(), arrays[name])


def test_unpack_returns_fresh_arrays(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)
    vector = layout.pack(dense_weights(layout))
    before = vector.copy()

    for array in layout.unpack(vector).values():
        array.fill(-1.0)

    np.testing.assert_array_equal(vector, before)


def test_layout_keeps_a_read_only_copy_of_the_masks() -> None:
    mask = np.array([[True, False], [False, True]])
    layout = PackLayout.from_masks({"w": (2, 2)}, {"w": mask})

    mask[:] = True

    assert layout.size == 2
    assert not layout.masks["w"].flags.writeable


def test_pack_refuses_missing_and_unexpected_names(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)
    weights = dense_weights(layout)
    del weights["fc2.bias"]
    weights["fc3.weight"] = np.zeros((1,), dtype=np.float32)

    with pytest.raises(CodecError, match=r"missing \['fc2.bias'\], unexpected \['fc3.weight'\]"):
        layout.pack(weights)


def test_pack_refuses_a_wrong_shape(ticket: Ticket) -> None:
    layout = PackLayout.from_ticket(ticket)
    weights = dense_weights(layout)
    weights["fc1.weight"] = weights["fc1.weight"].T

    with pytest.raises(CodecError, match=r"'fc1.weight' has shape \[6, 5\], the layout \[5, 6\]"):
        layout.pack(weights)


@pytest.mark.parametrize("shape", [(0,), (1,), (2, 3)])
def test_unpack_refuses_a_vector_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    layout = PackLayout.from_masks({"w": (2, 2), "b": (2,)}, {"w": np.eye(2, dtype=bool)})

    with pytest.raises(CodecError, match=r"the layout needs \[4\]"):
        layout.unpack(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"x": np.ones(2, dtype=bool)}, "mask 'x' names no parameter"),
        ({"w": np.ones(3, dtype=bool)}, r"must be bool of shape \[2\], got bool of shape \[3\]"),
        ({"w": np.ones(2, dtype=np.uint8)}, r"must be bool of shape \[2\], got uint8"),
    ],
)
def test_layout_refuses_masks_that_do_not_fit(masks: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(CodecError, match=match):
        PackLayout.from_masks({"w": (2,), "b": (2,)}, masks)


def test_layout_refuses_unsorted_names() -> None:
    with pytest.raises(CodecError, match="sorted and unique"):
        PackLayout(("b", "a"), ((1,), (1,)), {})


def test_an_empty_layout_packs_to_an_empty_vector() -> None:
    layout = PackLayout.from_masks({}, {})

    assert layout.size == 0
    assert layout.pack({}).shape == (0,)
    assert layout.unpack(np.zeros(0, dtype=np.float32)) == {}


@st.composite
def masked_weights(draw: st.DrawFn) -> tuple[dict[str, tuple[int, ...]], dict[str, Any], Any]:
    """Up to four parameters of random shapes; a random subset masked with random masks."""
    count = draw(st.integers(1, 4))
    shapes = {
        f"p{i}": draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)) for i in range(count)
    }
    masks = {
        name: draw(hnp.arrays(np.bool_, shape))
        for name, shape in shapes.items()
        if draw(st.booleans())
    }
    finite = st.floats(-1e6, 1e6, width=32)
    weights = {
        name: draw(hnp.arrays(np.float32, shape, elements=finite)) for name, shape in shapes.items()
    }
    return shapes, masks, weights


@settings(max_examples=60, deadline=None)
@given(masked_weights())
def test_round_trip_property(case: tuple[dict[str, tuple[int, ...]], dict[str, Any], Any]) -> None:
    shapes, masks, weights = case
    layout = PackLayout.from_masks(shapes, masks)

    unpacked = layout.unpack(layout.pack(weights))

    assert layout.size == sum(
        int(masks[n].sum()) if n in masks else int(np.prod(s)) for n, s in shapes.items()
    )
    for name, weight in weights.items():
        np.testing.assert_array_equal(unpacked[name], weight * masks.get(name, True))
