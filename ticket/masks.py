"""Pruning masks: which weights of a model survive, and how a mask is counted and packed.

A mask maps a parameter name to a boolean tensor of that parameter's shape (True = kept).
Only the weights of linear and convolutional layers are prunable; biases always stay dense,
as in Frankle & Carbin.
"""

from collections.abc import Mapping

import torch
from torch import nn

from ticket.bitmask import pack_mask, unpack_mask

Mask = dict[str, torch.Tensor]

_PRUNABLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the prunable weights in definition order; the last one is the output layer."""
    return [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, _PRUNABLE_LAYERS)
    ]


def full_mask(model: nn.Module) -> Mask:
    """The mask that keeps every prunable weight (density 1.0)."""
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in prunable_names(model)}


def kept_count(mask: Mapping[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in mask.values())


def total_count(mask: Mapping[str, torch.Tensor]) -> int:
    return sum(m.numel() for m in mask.values())


def density(mask: Mapping[str, torch.Tensor]) -> float:
    """Fraction of prunable weights kept, over all layers."""
    total = total_count(mask)
    return kept_count(mask) / total if total else 1.0


def layer_densities(mask: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: int(m.sum()) / m.numel() for name, m in mask.items()}


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    """Zero every pruned weight in place."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        params[name].mul_(m.to(params[name].dtype))


def pack_bits(mask: torch.Tensor) -> bytes:
    """Row-major, least significant bit first: bit i of byte j is element 8*j + i."""
    return pack_mask(mask.detach().reshape(-1).cpu().numpy())


def unpack_bits(data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_bits`; raises ValueError when `data` has the wrong length or stray bits."""
    return torch.from_numpy(unpack_mask(data, shape))
