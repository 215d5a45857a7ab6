"""The anchor's work without Flower: the dense model, a device's local epochs, a round's line."""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ticket.models import build_model

MODEL = "lenet-300-100"


def dense_model(seed: int) -> nn.Module:
    """The project's lenet-300-100 at density 1.0 (266,610 float32 values)."""
    return build_model(MODEL, {}, seed)


def train_local(
    model: nn.Module,
    x: npt.NDArray[np.float32],  # [N, 784]
    y: npt.NDArray[np.int64],  # [N]
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    seed: int,
) -> float:
    """`epochs` passes over (x, y) in place, in a seeded order; the last epoch's mean loss."""
    if optimizer == "sgd":
        step: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    elif optimizer == "adam":
        step = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        raise ValueError(f"run config: optimizer: expected sgd or adam, got {optimizer!r}")
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    model.train()
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        order = torch.from_numpy(rng.permutation(len(labels)))
        for start in range(0, len(labels), batch_size):
            rows = order[start : start + batch_size]
            step.zero_grad()
            loss = nn.functional.cross_entropy(model(features[rows]), labels[rows])
            loss.backward()
            step.step()
            loss_sum += float(loss.detach()) * len(rows)
            seen += len(rows)
    return loss_sum / max(seen, 1)


def round_line(
    server_round: int,
    *,
    wall_s: float,
    participants: Sequence[int],
    failures: Mapping[int, str],
    down: Mapping[int, int],
    up: Mapping[int, int],
) -> dict[str, Any]:
    """A run-log line (server/run_log.py's fields that bench/scale.py reads) for one round."""
    return {
        "round": server_round,
        "participants": sorted(participants),
        "failures": {str(node): why for node, why in sorted(failures.items())},
        "rejected": {},
        "bytes": {
            "down": {str(node): size for node, size in sorted(down.items())},
            "up": {str(node): size for node, size in sorted(up.items())},
            "down_total": sum(down.values()),
            "up_total": sum(up.values()),
        },
        "round_trips": {"train": 1, "total": 1},
        "wall_s": round(wall_s, 3),
    }
