"""bench/flower_anchor's pure part: the dense model is the project's lenet-300-100, local
training learns, and a round's line is one the run log reads back."""

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from server.run_log import RunLog
from ticket.models import build_model

APP = Path(__file__).resolve().parents[1] / "bench" / "flower_anchor"


@pytest.fixture(scope="module")
def task() -> ModuleType:
    sys.path.insert(0, str(APP))
    from fedavg_anchor import task

    return task


def test_the_dense_model_is_the_projects_lenet(task: ModuleType) -> None:
    model = task.dense_model(seed=3)
    reference = build_model("lenet-300-100", {}, 3)

    assert sum(p.numel() for p in model.parameters()) == 266_610
    for (name, ours), (_, theirs) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs), name


def test_local_training_lowers_the_loss(task: ModuleType) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 60).astype(np.int64)
    x = rng.normal(0, 0.1, (60, 784)).astype(np.float32)
    for row, label in enumerate(y):  # class c lights pixels 50c..50c+49: learnable at once
        x[row, 50 * label : 50 * label + 50] += 1.0
    model = task.dense_model(seed=0)
    options = {"batch_size": 10, "lr": 0.1, "optimizer": "sgd", "seed": 1}

    first = task.train_local(model, x, y, epochs=1, **options)
    later = task.train_local(model, x, y, epochs=5, **options)

    assert later < first / 2


def test_an_unknown_optimizer_is_named(task: ModuleType) -> None:
    x, y = np.zeros((2, 784), np.float32), np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="optimizer: expected sgd or adam, got 'lion'"):
        task.train_local(
            task.dense_model(seed=0), x, y, epochs=1, batch_size=2, lr=0.1, optimizer="lion", seed=0
        )


def test_a_round_line_reads_back_from_the_run_log(task: ModuleType, tmp_path: Path) -> None:
    log = RunLog(tmp_path / "rounds.jsonl")
    line = task.round_line(
        2,
        wall_s=1.23456,
        participants=[5, 3],
        failures={7: "timeout"},
        down={3: 9, 5: 9, 7: 9},
        up={3: 8, 5: 8},
    )

    log.append(line)
    [back] = log.read()

    assert back["round"] == 2 and back["wall_s"] == 1.235
    assert back["participants"] == [3, 5] and back["failures"] == {"7": "timeout"}
    assert back["bytes"]["up"] == {"3": 8, "5": 8} and back["bytes"]["down_total"] == 27
