"""SNIP (Lee et al., ICLR 2019) on the fleet: connection saliency at initialisation, summed.

A device scores each kept weight by |dL/dw * w| on its own training rows (the loss of one pass
over them, at the weights the server sent), scales its scores so the largest is `scale`, and
sends them as an ordinary update: under secure aggregation the server learns only the fleet's
example-weighted mean. The server keeps the `target` fraction with the highest mean saliency,
ranked across layers as SNIP does, with one guard the paper leaves out: every layer keeps at
least its best weight, so no layer is cut off at extreme sparsity.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ticket.errors import TicketError

if TYPE_CHECKING:  # torch only when scoring with it: the search registry imports this module
    import torch
    from torch import nn

BATCH = 256  # rows per backward pass; the gradient is of the mean loss over all rows


def connection_saliency(
    model: "nn.Module",
    mask: "Mapping[str, torch.Tensor]",
    x: "torch.Tensor",
    y: "torch.Tensor",
    *,
    scale: float,
) -> "tuple[dict[str, torch.Tensor], float]":
    """(|dL/dw * w| of every masked parameter of `model`, zero where pruned and scaled so the
    largest is `scale`; the mean loss on the rows)."""
    from torch import nn

    if x.shape[0] == 0:
        raise TicketError("no training examples to score saliency on")
    params = dict(model.named_parameters())
    model.zero_grad()
    model.eval()  # no dropout: the score is of the network as it stands
    total = 0.0
    for start in range(0, x.shape[0], BATCH):
        batch = slice(start, start + BATCH)
        logits = model(x[batch])
        loss = nn.functional.cross_entropy(logits, y[batch], reduction="sum") / x.shape[0]
        total += float(loss.detach())
        loss.backward()  # type: ignore[no-untyped-call]  # torch stubs leave it untyped
    scores: dict[str, torch.Tensor] = {}
    for name, keep in mask.items():
        grad = params[name].grad
        if grad is None:
            raise TicketError(f"layer {name} does not take part in the forward pass")
        scores[name] = (grad * params[name]).detach().abs() * keep.to(grad.dtype)
    model.zero_grad()
    top = max(float(s.max()) for s in scores.values())
    if not np.isfinite(top):
        raise TicketError("saliency is not finite on these rows")
    if top == 0.0:
        raise TicketError("saliency is zero everywhere on these rows")
    return {name: s * (scale / top) for name, s in scores.items()}, total


def saliency_mask(
    saliency: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray], target: float
) -> dict[str, np.ndarray]:
    """Keep the `target` fraction of all prunable weights with the highest saliency."""
    if not 0.0 < target <= 1.0:
        raise TicketError(f"target density must be in (0, 1], got {target}")
    names = sorted(mask)
    for name in names:
        if not np.isfinite(saliency[name]).all():
            raise TicketError(f"the fleet's saliency of {name} is not finite")
    total = sum(mask[n].size for n in names)
    keep = max(len(names), round(target * total))
    # Pruned weights rank below every kept one; ties go in position order (stable sort).
    flat = np.concatenate(
        [np.where(mask[n], saliency[n], -np.inf).reshape(-1) for n in names]
    ).astype(np.float64)
    chosen = np.zeros(flat.size, np.bool_)
    chosen[np.argsort(-flat, kind="stable")[:keep]] = True
    chosen &= np.isfinite(flat)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in names:
        size = mask[name].size
        layer = chosen[offset : offset + size].reshape(mask[name].shape)
        if not layer.any():  # the guard: a layer's best weight stays
            scores = np.where(mask[name], saliency[name], -np.inf)
            layer = np.zeros_like(layer)
            layer.reshape(-1)[int(np.argmax(scores))] = True
        out[name] = layer
        offset += size
    return out
