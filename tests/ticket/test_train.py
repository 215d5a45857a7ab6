import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ticket.errors import TicketError
from ticket.masks import full_mask
from ticket.models import build_model
from ticket.train import evaluate, make_optimizer, snapshot, train_masked
from ticket.train_config import TrainConfig


def _toy_data(seed: int = 0, rows: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 6, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def _random_mask(model: torch.nn.Module, keep: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.shape, generator=generator) < keep for n, m in full_mask(model).items()}


@settings(max_examples=15, deadline=None)
@given(
    keep=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
    optimizer=st.sampled_from(["adam", "sgd"]),
    momentum=st.sampled_from([0.0, 0.9]),
    weight_decay=st.sampled_from([0.0, 1e-2]),
)
def test_pruned_weights_stay_exactly_zero_after_every_step(
    keep: float, seed: int, optimizer: str, momentum: float, weight_decay: float
) -> None:
    model = build_model("heart-mlp", {"in_features": 6, "hidden": [8]}, seed=seed)
    mask = _random_mask(model, keep, seed)
    x, y = _toy_data(seed)
    config = TrainConfig(
        epochs=2,
        batch_size=16,
        lr=0.05,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    params = dict(model.named_parameters())
    violations: list[int] = []

    def check(step: int, current: torch.nn.Module) -> None:
        for name, m in mask.items():
            if torch.count_nonzero(params[name][~m]) != 0:
                violations.append(step)

    train_masked(model, mask, x, y, config, seed=seed, on_step=check)
    assert violations == []
    # ...and the optimiser could not have smuggled momentum into pruned coordinates either:
    # the kept weights did move.
    assert any(torch.count_nonzero(params[n][m]) > 0 for n, m in mask.items())


def test_training_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    x, y = _toy_data()
    results = []
    for seed in (1, 1, 2):
        model = build_model("heart-mlp", {"in_features": 6, "hidden": [8]}, seed=0)
        train_masked(
            model, full_mask(model), x, y, TrainConfig(epochs=3, batch_size=8, lr=0.01), seed=seed
        )
        results.append(snapshot(model))
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])
    assert not all(torch.equal(results[0][n], results[2][n]) for n in results[0])


def test_training_learns_a_separable_task() -> None:
    x, y = _toy_data(rows=256)
    model = build_model("heart-mlp", {"in_features": 6, "hidden": [16]}, seed=0)
    before = evaluate(model, x, y)
    train_masked(
        model, full_mask(model), x, y, TrainConfig(epochs=20, batch_size=32, lr=0.01), seed=0
    )
    after = evaluate(model, x, y)
    assert after.loss < before.loss
    assert after.accuracy > 0.9
    assert after.auc is not None and after.auc > 0.95


def test_on_step_sees_step_zero_and_every_step() -> None:
    x, y = _toy_data(rows=20)
    model = build_model("heart-mlp", {"in_features": 6, "hidden": [4]}, seed=0)
    steps: list[int] = []
    train_masked(
        model,
        full_mask(model),
        x,
        y,
        TrainConfig(epochs=2, batch_size=8, lr=0.01),
        seed=0,
        on_step=lambda step, _: steps.append(step),
    )
    assert steps == list(range(7))  # ceil(20/8)=3 per epoch, 2 epochs, plus step 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "lion"}, "optimizer"),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"epochs": 1, "batch_size": 1, "lr": 0.1}
    with pytest.raises(TicketError, match=message):
        TrainConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def test_evaluate_reports_no_auc_for_multiclass() -> None:
    model = build_model("heart-mlp", {"in_features": 6, "hidden": [4], "num_classes": 3}, seed=0)
    x, _ = _toy_data()
    result = evaluate(model, x, torch.randint(0, 3, (x.shape[0],)))
    assert result.auc is None
    assert result.examples == x.shape[0]


def _pruned_state(
    optimizer: torch.optim.Optimizer,
    params: dict[str, torch.nn.Parameter],
    mask: dict[str, torch.Tensor],
) -> list[torch.Tensor]:
    """Every per-weight optimiser state tensor (Adam moments, momentum) at pruned positions."""
    return [
        value[~mask[name]]
        for name in mask
        for value in optimizer.state[params[name]].values()
        if isinstance(value, torch.Tensor) and value.shape == params[name].shape
    ]


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer="adam", weight_decay=1e-2),
        TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer="sgd", momentum=0.9),
    ],
    ids=["adam", "sgd-momentum"],
)
def test_optimiser_state_built_before_the_mask_cannot_revive_pruned_weights(
    config: TrainConfig,
) -> None:
    # Dense training first, so the optimiser's moments are non-zero at every position; then
    # the same optimiser continues under a mask. Left alone, those moments would move pruned
    # weights at every step (hidden only by re-masking the weights) and stay in the state for
    # whatever continues with it: the state itself must be zero there.
    x, y = _toy_data(seed=5)
    model = build_model("heart-mlp", {"in_features": 6, "hidden": [8]}, seed=5)
    params = dict(model.named_parameters())
    optimizer = make_optimizer(model, config)
    train_masked(model, full_mask(model), x, y, config, seed=5, optimizer=optimizer)
    mask = _random_mask(model, 0.3, seed=5)
    assert all(torch.count_nonzero(t) > 0 for t in _pruned_state(optimizer, params, mask))

    violations: list[int] = []

    def check(step: int, current: torch.nn.Module) -> None:
        if any(torch.count_nonzero(params[n][~m]) for n, m in mask.items()):
            violations.append(step)

    train_masked(model, mask, x, y, config, seed=6, on_step=check, optimizer=optimizer)

    assert violations == []
    assert all(torch.count_nonzero(t) == 0 for t in _pruned_state(optimizer, params, mask))
