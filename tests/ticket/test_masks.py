import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ticket.masks import (
    apply_mask,
    density,
    full_mask,
    layer_densities,
    pack_bits,
    prunable_names,
    unpack_bits,
)
from ticket.models import build_model


def test_prunable_names_are_weights_in_order_with_output_last() -> None:
    model = build_model("heart-mlp", {"in_features": 5, "hidden": [4, 3]}, seed=0)
    assert prunable_names(model) == ["fc1.weight", "fc2.weight", "fc3.weight"]


def test_full_mask_has_density_one_and_apply_zeroes_pruned() -> None:
    model = build_model("heart-mlp", {"in_features": 5, "hidden": [4]}, seed=0)
    mask = full_mask(model)
    assert density(mask) == 1.0
    mask["fc1.weight"][0, :] = False
    apply_mask(model, mask)
    assert torch.count_nonzero(model.fc1.weight[0]) == 0
    assert torch.count_nonzero(model.fc1.weight[1:]) == model.fc1.weight[1:].numel()
    assert layer_densities(mask)["fc1.weight"] == 0.75


@given(st.lists(st.booleans(), min_size=1, max_size=200), st.integers(1, 4))
def test_pack_bits_round_trips(bits: list[bool], rows: int) -> None:
    bits = bits * rows
    mask = torch.tensor(bits).reshape(rows, -1)
    packed = pack_bits(mask)
    assert len(packed) == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bits(packed, tuple(mask.shape)), mask)


def test_pack_bits_is_little_endian_row_major() -> None:
    # Pinned: a change here changes every ticket's bytes and id.
    mask = torch.tensor(
        [[True, False, False, False], [False, False, False, False], [True, True, False, False]]
    )
    assert pack_bits(mask) == bytes([0b0000_0001, 0b0000_0011])


def test_unpack_bits_rejects_wrong_length_and_stray_padding() -> None:
    with pytest.raises(ValueError, match="needs 1 bytes"):
        unpack_bits(b"\x00\x00", (3,))
    with pytest.raises(ValueError, match="padding"):
        unpack_bits(b"\xff", (3,))
