"""Masked training and evaluation loops: pruned weights stay exactly zero after every step."""

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ticket.errors import TicketError
from ticket.masks import apply_mask
from ticket.metrics import roc_auc
from ticket.train_config import EvalResult, TrainConfig

StepHook = Callable[[int, nn.Module], None]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


@torch.no_grad()
def _mask_gradients(params: Mapping[str, nn.Parameter], mask: Mapping[str, torch.Tensor]) -> None:
    for name, keep in mask.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(keep)


@torch.no_grad()
def _mask_optimizer_state(
    params: Mapping[str, nn.Parameter],
    mask: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> None:
    # Masking only the forward pass would let momentum and Adam's moments carry pruned weights
    # off zero (e.g. an optimiser whose state predates the mask); masked gradients, state and
    # weights keep them exactly zero.
    for name, keep in mask.items():
        param = params[name]
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.mul_(keep)


def train_masked(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    on_step: StepHook | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """Train `model` in place on (x, y) with `mask` fixed; returns the last epoch's mean loss.

    `on_step(step, model)` runs before step 0 and after every optimiser step (so a rewind point
    k is captured as `on_step(k, ...)`); `on_epoch(epoch, mean_loss)` after every epoch.
    The data order depends only on `seed`. `optimizer` continues an optimiser over `model`'s
    parameters whose state may predate the mask (e.g. from dense training); by default a
    fresh one is made from `config`.
    """
    if x.shape[0] != y.shape[0]:
        raise TicketError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise TicketError("no training examples")
    params = dict(model.named_parameters())
    bool_mask = {name: keep.to(torch.bool) for name, keep in mask.items()}
    apply_mask(model, bool_mask)
    if optimizer is None:
        optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    step = 0
    if on_step is not None:
        on_step(0, model)
    mean_loss = float("nan")
    for epoch in range(config.epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        total, batches = 0.0, 0
        for start in range(0, x.shape[0], config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()  # type: ignore[no-untyped-call]  # torch stubs leave it untyped
            _mask_gradients(params, bool_mask)
            optimizer.step()
            _mask_optimizer_state(params, bool_mask, optimizer)
            apply_mask(model, bool_mask)
            step += 1
            total += loss.item()
            batches += 1
            if on_step is not None:
                on_step(step, model)
        mean_loss = total / batches
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
    return mean_loss


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """`model`'s logits [N, classes] for rows `x` [N, F], in eval mode, in batches."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048
) -> EvalResult:
    """Mean cross-entropy, accuracy and (for two classes) ROC-AUC of `model` on (x, y)."""
    if x.shape[0] == 0:
        raise TicketError("no evaluation examples")
    logits = logits_of(model, x, batch_size)
    loss = float(nn.functional.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    auc = None
    if logits.shape[1] == 2:
        scores = torch.softmax(logits, dim=1)[:, 1].numpy().astype(np.float64)
        auc = roc_auc(scores, y.numpy())
    return EvalResult(loss=loss, accuracy=accuracy, auc=auc, examples=int(x.shape[0]))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter, keyed by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(weights))
    if missing:
        raise TicketError(f"no weights for parameter(s): {', '.join(missing)}")
    for name, param in params.items():
        param.copy_(weights[name])
