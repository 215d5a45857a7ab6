"""The model registry: seeded, isolated construction; the paper's shapes; argument errors."""

import pytest
import torch

from ticket.errors import TicketError, UnknownNameError
from ticket.masks import full_mask, prunable_names, total_count
from ticket.models import ModelArgumentError, build_model
from ticket.train import snapshot

HEART_ARGS = {"in_features": 35, "num_classes": 2}  # heart-uci's encoded features


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(("name", "args"), [("heart-mlp", HEART_ARGS), ("lenet-300-100", {})])
def test_same_seed_gives_identical_weights_and_other_seeds_differ(
    name: str, args: dict[str, int]
) -> None:
    first = snapshot(build_model(name, args, seed=3))
    again = snapshot(build_model(name, args, seed=3))
    other = snapshot(build_model(name, args, seed=4))

    assert _same(first, again)
    assert not any(torch.equal(first[n], other[n]) for n in first)


def test_building_neither_reads_nor_moves_the_global_rng() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    built = snapshot(build_model("heart-mlp", HEART_ARGS, seed=0))

    assert torch.equal(torch.get_rng_state(), state)  # the caller's randomness is untouched
    torch.manual_seed(999)
    assert _same(snapshot(build_model("heart-mlp", HEART_ARGS, seed=0)), built)


def test_lenet_300_100_has_the_papers_shapes() -> None:
    model = build_model("lenet-300-100", {}, seed=0)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}

    assert shapes == {
        "fc1.weight": (300, 784),
        "fc1.bias": (300,),
        "fc2.weight": (100, 300),
        "fc2.bias": (100,),
        "fc3.weight": (10, 100),
        "fc3.bias": (10,),
    }
    assert prunable_names(model) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert total_count(full_mask(model)) == 266_200  # Frankle & Carbin's count
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)  # images flatten to 784


def test_heart_mlp_shapes_default_and_custom_hidden() -> None:
    default = build_model("heart-mlp", HEART_ARGS, seed=0)
    custom = build_model("heart-mlp", {**HEART_ARGS, "hidden": [16, 8]}, seed=0)

    assert {n: tuple(p.shape) for n, p in default.named_parameters()} == {
        "fc1.weight": (64, 35),
        "fc1.bias": (64,),
        "fc2.weight": (32, 64),
        "fc2.bias": (32,),
        "fc3.weight": (2, 32),
        "fc3.bias": (2,),
    }
    assert total_count(full_mask(default)) == 4_352  # bench/results/lth_heart.md
    assert [tuple(custom.get_parameter(n).shape) for n in prunable_names(custom)] == [
        (16, 35),
        (8, 16),
        (2, 8),
    ]
    assert default(torch.zeros(7, 35)).shape == (7, 2)


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="heart-mlp, lenet-300-100"):
        build_model("resnet", {}, seed=0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"depth": 3}, r"takes no argument\(s\) depth; it takes: in_features, hidden"),
        ({"hidden": [0]}, r"argument hidden: expected a list of integers >= 1, got \[0\]"),
        ({"hidden": [16, -1]}, r"argument hidden: .* got \[16, -1\]"),
        ({"hidden": "wide"}, "argument hidden: .* got 'wide'"),
        ({"hidden": 16}, "argument hidden: .* got 16"),
        ({"hidden": [1.5]}, r"argument hidden: .* got \[1.5\]"),
        ({"in_features": 0}, "argument in_features: expected an integer >= 1, got 0"),
        ({"num_classes": True}, "argument num_classes: expected an integer >= 1, got True"),
    ],
)
def test_bad_arguments_raise_an_error_naming_the_argument(
    args: dict[str, object], message: str
) -> None:
    with pytest.raises(ModelArgumentError, match=message) as caught:
        build_model("lenet-300-100", args, seed=0)

    assert isinstance(caught.value, TicketError)
    assert "lenet-300-100" in str(caught.value)
