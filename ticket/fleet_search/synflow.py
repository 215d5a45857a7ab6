"""SynFlow (Tanaka et al., NeurIPS 2020): iterative synaptic-flow pruning at initialisation.

Data-free: the network's weights are replaced by their absolute values, an all-ones input is
pushed through, and R = sum of the outputs is the "synaptic flow". A weight's score is
|dR/dw * w|, the share of the flow that passes through it. Pruning the lowest scores in one
go would disconnect whole layers (layer collapse); SynFlow instead prunes over `iterations`
steps with an exponential schedule (density target^(i/n) after step i), rescoring each time, so
the scores of a thinning layer rise and protect it. The ranking is global across layers.
"""

import copy
from collections.abc import Callable

import torch
from torch import nn

from ticket.errors import TicketError
from ticket.masks import Mask, full_mask, kept_count, prunable_names, total_count

DataFreePruner = Callable[[nn.Module, tuple[int, ...], float, int], Mask]


def synflow_mask(
    model: nn.Module, input_shape: tuple[int, ...], target: float, iterations: int
) -> Mask:
    """The mask keeping `target` of the prunable weights of `model` (left untouched).

    `input_shape` is one example's shape (e.g. (13,) for heart's features); `iterations` >= 1.
    """
    if not 0.0 < target <= 1.0:
        raise TicketError(f"target density must be in (0, 1], got {target}")
    if iterations < 1:
        raise TicketError(f"synflow needs at least 1 iteration, got {iterations}")
    # float64: products of |w| over many layers underflow float32 (the paper does the same).
    probe = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.abs_()
    original = {name: p.detach().clone() for name, p in probe.named_parameters()}
    mask = full_mask(probe)
    total = total_count(mask)
    ones = torch.ones((1, *input_shape), dtype=torch.float64)
    for step in range(1, iterations + 1):
        scores = synflow_scores(probe, original, mask, ones)
        keep = round(total * target ** (step / iterations))
        mask = _keep_top(scores, mask, keep)
    return mask


def synflow_scores(
    probe: nn.Module, original: dict[str, torch.Tensor], mask: Mask, ones: torch.Tensor
) -> dict[str, torch.Tensor]:
    """|dR/dw * w| of every prunable weight of `probe` (positive weights) under `mask`."""
    params = dict(probe.named_parameters())
    with torch.no_grad():
        for name, parameter in params.items():
            kept = mask.get(name)
            parameter.copy_(original[name] if kept is None else original[name] * kept)
    probe.zero_grad()
    flow = probe(ones).sum()  # R: a scalar
    flow.backward()
    scores = {}
    for name in prunable_names(probe):
        grad = params[name].grad
        if grad is None:
            raise TicketError(f"layer {name} does not take part in the forward pass")
        scores[name] = (grad * params[name]).detach().abs()
    return scores


def _keep_top(scores: dict[str, torch.Tensor], mask: Mask, keep: int) -> Mask:
    """`mask` with its lowest-scoring kept weights (ranked globally) off, `keep` left on.

    Only kept weights compete, so the mask only shrinks even when the scores of pruned
    weights are zero ties; equal scores go in position order (stable sort).
    """
    names = list(mask)
    drop = kept_count(mask) - keep
    if drop <= 0:
        return mask
    flat_scores = torch.cat([scores[n].reshape(-1) for n in names])
    flat_keep = torch.cat([mask[n].reshape(-1) for n in names]).clone()
    kept_index = flat_keep.nonzero().squeeze(1)  # [kept]
    order = torch.argsort(flat_scores[kept_index], stable=True)
    flat_keep[kept_index[order[:drop]]] = False
    pruned: Mask = {}
    offset = 0
    for name in names:
        size = mask[name].numel()
        pruned[name] = flat_keep[offset : offset + size].reshape(mask[name].shape)
        offset += size
    return pruned
