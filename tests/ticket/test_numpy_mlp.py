"""The numpy trainer against ticket/train.py's torch trainer on the same batches."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from ticket import numpy_mlp
from ticket.errors import TicketError
from ticket.fleet_search.snip import connection_saliency
from ticket.masks import full_mask
from ticket.models import build_model
from ticket.train import evaluate, snapshot, train_masked
from ticket.train_config import TrainConfig

ROWS = 40


def _setup(seed: int = 0, classes: int = 2, keep: float = 0.4):
    model = build_model(
        "heart-mlp", {"in_features": 6, "hidden": [8, 5], "num_classes": classes}, seed=seed
    )
    generator = torch.Generator().manual_seed(seed)
    masks = {
        n: torch.rand(m.shape, generator=generator) < keep for n, m in full_mask(model).items()
    }
    x = torch.randn(ROWS, 6, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() if classes == 2 else torch.randint(0, classes, (ROWS,))
    return model, masks, x, y


def _numpy(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {n: t.detach().numpy().copy() for n, t in tensors.items()}


def _torch_orders(seed: int, epochs: int) -> list[np.ndarray]:
    """The batch orders ticket/train.py draws for `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(ROWS, generator=generator).numpy() for _ in range(epochs)]


@pytest.mark.parametrize(
    ("optimizer", "momentum", "weight_decay"),
    [("adam", 0.0, 0.0), ("adam", 0.0, 1e-2), ("sgd", 0.0, 0.0), ("sgd", 0.9, 1e-2)],
)
def test_training_matches_torch_on_the_same_batches(
    optimizer: str, momentum: float, weight_decay: float
) -> None:
    model, masks, x, y = _setup()
    start = _numpy(snapshot(model))
    config = TrainConfig(
        epochs=3,
        batch_size=7,
        lr=0.05,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    torch_loss = train_masked(model, masks, x, y, config, seed=11)
    trained, loss = numpy_mlp.train_masked(
        start, _numpy(masks), x.numpy(), y.numpy(), config, seed=0, order=_torch_orders(11, 3)
    )
    assert loss == pytest.approx(torch_loss, rel=1e-5)
    for name, value in _numpy(snapshot(model)).items():
        np.testing.assert_allclose(trained[name], value, atol=2e-6, err_msg=name)


def test_pruned_weights_stay_exactly_zero_and_inputs_are_untouched() -> None:
    model, masks, x, y = _setup(seed=3, keep=0.2)
    start = _numpy(snapshot(model))  # dense: pruned positions hold their initial values
    before = {n: v.copy() for n, v in start.items()}
    config = TrainConfig(epochs=2, batch_size=5, lr=0.1, optimizer="sgd", momentum=0.9)
    trained, _ = numpy_mlp.train_masked(start, _numpy(masks), x.numpy(), y.numpy(), config, seed=1)
    for name, keep in _numpy(masks).items():
        assert np.all(trained[name][~keep] == 0.0), name
        assert np.any(trained[name][keep] != before[name][keep]), name
    for name, value in before.items():
        assert np.array_equal(start[name], value), name


def test_only_the_trainable_parameters_change() -> None:
    model, masks, x, y = _setup(seed=4)
    start = {n: v * 1 for n, v in _numpy(snapshot(model)).items()}
    for name, keep in _numpy(masks).items():
        start[name] *= keep
    last = set(numpy_mlp.last_layer(start))
    assert last == {"fc3.weight", "fc3.bias"}
    config = TrainConfig(epochs=2, batch_size=8, lr=0.05)
    trained, _ = numpy_mlp.train_masked(
        start, _numpy(masks), x.numpy(), y.numpy(), config, seed=2, trainable=last
    )
    for name, value in start.items():
        changed = not np.array_equal(trained[name], value)
        assert changed == (name in last), name


def test_the_data_order_depends_only_on_the_seed() -> None:
    model, masks, x, y = _setup(seed=5)
    start, keep = _numpy(snapshot(model)), _numpy(masks)
    config = TrainConfig(epochs=2, batch_size=4, lr=0.05)

    def run(seed: int) -> dict[str, np.ndarray]:
        return numpy_mlp.train_masked(start, keep, x.numpy(), y.numpy(), config, seed=seed)[0]

    first, again, other = run(9), run(9), run(10)
    assert all(np.array_equal(first[n], again[n]) for n in first)
    assert any(not np.array_equal(first[n], other[n]) for n in first)


@pytest.mark.parametrize("classes", [2, 3])
def test_logits_and_evaluation_match_torch(classes: int) -> None:
    model, _, x, y = _setup(seed=6, classes=classes)
    params = _numpy(snapshot(model))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(numpy_mlp.logits(params, x.numpy()), expected, atol=1e-6)
    np.testing.assert_allclose(numpy_mlp.probabilities(params, x.numpy()).sum(axis=1), 1, 1e-6)
    ours, theirs = numpy_mlp.evaluate(params, x.numpy(), y.numpy()), evaluate(model, x, y)
    assert ours.loss == pytest.approx(theirs.loss, rel=1e-5)
    assert ours.accuracy == pytest.approx(theirs.accuracy, abs=1e-7)  # torch: float32 mean
    assert ours.examples == theirs.examples
    if classes == 2:
        assert ours.auc == pytest.approx(theirs.auc, abs=1e-9)
    else:
        assert ours.auc is None and theirs.auc is None


def test_saliency_matches_the_torch_snip_score() -> None:
    model, masks, _, _ = _setup(seed=7)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 6, generator=generator)  # more rows than one saliency batch
    y = (x[:, 0] > 0).long()
    params = _numpy(snapshot(model))
    theirs, their_loss = connection_saliency(model, masks, x, y, scale=100.0)
    ours, our_loss = numpy_mlp.connection_saliency(
        params, _numpy(masks), x.numpy(), y.numpy(), scale=100.0
    )
    assert our_loss == pytest.approx(their_loss, rel=1e-5)
    assert set(ours) == set(theirs)
    for name, score in theirs.items():
        np.testing.assert_allclose(ours[name], score.numpy(), atol=1e-4, err_msg=name)
        assert float(ours[name].max()) <= 100.0 + 1e-4


def test_is_mlp_accepts_only_fc1_to_fcn_with_weights_and_biases() -> None:
    assert numpy_mlp.is_mlp(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
    assert not numpy_mlp.is_mlp(["fc1.weight", "fc1.bias", "fc3.weight", "fc3.bias"])
    assert not numpy_mlp.is_mlp(["fc1.weight"])
    assert not numpy_mlp.is_mlp(["conv1.weight", "conv1.bias"])
    assert not numpy_mlp.is_mlp([])


def test_bad_inputs_are_named() -> None:
    model, masks, x, y = _setup(seed=8)
    params, keep = _numpy(snapshot(model)), _numpy(masks)
    config = TrainConfig(epochs=1, batch_size=4, lr=0.01)
    with pytest.raises(TicketError, match="40 inputs but 39 labels"):
        numpy_mlp.train_masked(params, keep, x.numpy(), y.numpy()[:-1], config, seed=0)
    with pytest.raises(TicketError, match="no training examples"):
        numpy_mlp.train_masked(params, keep, x.numpy()[:0], y.numpy()[:0], config, seed=0)
    with pytest.raises(TicketError, match=r"labels must lie in \[0, 2\)"):
        numpy_mlp.train_masked(params, keep, x.numpy(), y.numpy() + 5, config, seed=0)
    with pytest.raises(TicketError, match="no such parameter"):
        numpy_mlp.train_masked(params, keep, x.numpy(), y.numpy(), config, seed=0, trainable=["x"])
    with pytest.raises(TicketError, match="not an MLP"):
        numpy_mlp.logits({"conv1.weight": np.zeros((2, 2), np.float32)}, x.numpy())
    with pytest.raises(TicketError, match="no evaluation examples"):
        numpy_mlp.evaluate(params, x.numpy()[:0], y.numpy()[:0])
    with pytest.raises(TicketError, match="2 epoch orders for 1 epochs"):
        numpy_mlp.train_masked(
            params, keep, x.numpy(), y.numpy(), config, seed=0, order=[np.arange(40)] * 2
        )


def test_the_numpy_trainer_loads_no_torch() -> None:
    probe = "import sys, ticket.numpy_mlp; print('torch' in sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "False"
