"""Pruning: how each level's mask is chosen (methods, pruners) and the paper's two controls.

Three registries, each a name -> implementation:
- PRUNERS decide *which* weights go, given how many per layer: magnitude (layer-wise or
  global) or random.
- METHODS decide *how many* go at each level: iterative (IMP, a fixed fraction of what
  remains per level) or one-shot (straight to the target).
- CONTROLS derive the comparison runs of Frankle & Carbin: the ticket's mask with a fresh
  random initialisation, and a random mask with the ticket's per-layer densities.
"""

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ticket.errors import TicketError
from ticket.masks import Mask, kept_count, total_count
from ticket.registry import Registry

Weights = Mapping[str, torch.Tensor]
Fractions = dict[str, float]  # per layer: fraction of the currently kept weights to remove


def derive_seed(seed: int, *labels: object) -> int:
    """A stable 63-bit seed for a labelled sub-task, independent of Python's hash salt."""
    text = ":".join(str(part) for part in (seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class PruningRates:
    """Fraction of remaining weights pruned per level; the output layer at half rate by default."""

    rate: float = 0.2
    output_rate: float | None = None
    layer_rates: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, value in [("rate", self.rate), ("output_rate", self.output_rate)]:
            if value is not None and not 0.0 <= value < 1.0:
                raise TicketError(f"{label} must be in [0, 1), got {value}")
        for name, value in self.layer_rates.items():
            if not 0.0 <= value < 1.0:
                raise TicketError(f"rate of layer {name!r} must be in [0, 1), got {value}")

    def per_layer(self, names: list[str]) -> dict[str, float]:
        """Rates for `names` (in model order; the last is the output layer)."""
        unknown = sorted(set(self.layer_rates) - set(names))
        if unknown:
            raise TicketError(
                f"no prunable layer named {', '.join(unknown)}; layers: {', '.join(names)}"
            )
        output_rate = self.rate / 2 if self.output_rate is None else self.output_rate
        rates = {name: self.rate for name in names}
        rates[names[-1]] = output_rate
        rates.update(self.layer_rates)
        return rates


# ---------------------------------------------------------------- pruners: which weights go


def _count_to_prune(keep: torch.Tensor, fraction: float) -> int:
    return min(int(keep.sum()), round(fraction * int(keep.sum())))


def removes_nothing(mask: Mask, fractions: Fractions) -> bool:
    """True when every layer's share rounds to zero weights, so a level would change nothing."""
    return all(_count_to_prune(keep, fractions.get(name, 0.0)) == 0 for name, keep in mask.items())


def magnitude_layerwise(
    weights: Weights, mask: Mask, fractions: Fractions, generator: torch.Generator
) -> Mask:
    """In each layer, prune the `fraction` of its kept weights with the smallest magnitude."""
    del generator  # deterministic: ties broken by position (stable sort)
    pruned: Mask = {}
    for name, keep in mask.items():
        count = _count_to_prune(keep, fractions.get(name, 0.0))
        pruned[name] = _drop_smallest(weights[name], keep, count)
    return pruned


def magnitude_global(
    weights: Weights, mask: Mask, fractions: Fractions, generator: torch.Generator
) -> Mask:
    """Rank all hidden layers' kept weights together; the output layer keeps its own fraction.

    The number pruned equals what layer-wise pruning would remove in total, so both scopes
    reach the same overall density, but global lets small-magnitude layers give up more.
    """
    names = list(mask)
    hidden, output = names[:-1], names[-1]
    pruned = magnitude_layerwise(weights, {output: mask[output]}, fractions, generator)
    count = sum(_count_to_prune(mask[name], fractions.get(name, 0.0)) for name in hidden)
    if not hidden:
        return pruned
    magnitudes = torch.cat([weights[n].abs().reshape(-1) for n in hidden])
    keeps = torch.cat([mask[n].reshape(-1) for n in hidden])
    new_keep = _drop_smallest(magnitudes, keeps, count)
    offset = 0
    for name in hidden:
        size = mask[name].numel()
        pruned[name] = new_keep[offset : offset + size].reshape(mask[name].shape)
        offset += size
    return {name: pruned[name] for name in names}


def random_pruner(
    weights: Weights, mask: Mask, fractions: Fractions, generator: torch.Generator
) -> Mask:
    """Prune a uniformly random `fraction` of each layer's kept weights (a control)."""
    del weights
    pruned: Mask = {}
    for name, keep in mask.items():
        count = _count_to_prune(keep, fractions.get(name, 0.0))
        noise = torch.rand(keep.shape, generator=generator)
        pruned[name] = _drop_smallest(noise, keep, count)
    return pruned


def _drop_smallest(scores: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
    """`keep` with the `count` kept entries of smallest `scores` switched off."""
    flat_keep = keep.reshape(-1).clone()
    if count <= 0:
        return flat_keep.reshape(keep.shape)
    kept_index = flat_keep.nonzero().squeeze(1)  # [kept]
    kept_scores = scores.reshape(-1)[kept_index].abs()
    order = torch.argsort(kept_scores, stable=True)  # ties: earlier position goes first
    flat_keep[kept_index[order[:count]]] = False
    return flat_keep.reshape(keep.shape)


Pruner = Callable[[Weights, Mask, Fractions, torch.Generator], Mask]

PRUNERS: Registry[Pruner] = Registry(
    "pruner",
    {
        "magnitude-layerwise": magnitude_layerwise,
        "magnitude-global": magnitude_global,
        "random": random_pruner,
    },
)


# ---------------------------------------------------------------- methods: how many go


def solve_fractions(mask: Mask, rates: Mapping[str, float], target: float) -> Fractions:
    """Scale the per-layer `rates` by one factor s so that pruning lands on `target` density.

    Layers keep their relative rates (the output layer still loses half as much); each
    fraction is capped at 1. Bisection, since the caps make the map piecewise linear.
    """
    total = total_count(mask)

    def density_after(scale: float) -> float:
        return (
            sum(int(m.sum()) * (1.0 - min(1.0, scale * rates[n])) for n, m in mask.items()) / total
        )

    positive = [r for r in rates.values() if r > 0]
    if not positive:
        raise TicketError("every pruning rate is zero: nothing can be pruned")
    low, high = 0.0, 1.0 / min(positive)
    if density_after(high) > target:
        raise TicketError(f"target density {target} is unreachable with these layer rates")
    for _ in range(100):
        middle = (low + high) / 2
        if density_after(middle) > target:
            low = middle
        else:
            high = middle
    return {name: min(1.0, high * rates[name]) for name in mask}


def is_at_target(mask: Mask, target: float) -> bool:
    """True once the mask keeps no more than `target` of its weights, up to per-layer rounding.

    Each layer rounds its pruned count to a whole weight, so a level aimed exactly at the
    target can land up to half a weight per layer above it; chasing that remainder would add
    a pointless extra level (or, with nothing left to round, loop forever).
    """
    slack = len(mask) / 2
    return kept_count(mask) <= target * total_count(mask) + slack


def imp_fractions(
    mask: Mask, rates: Mapping[str, float], target: float, level: int
) -> Fractions | None:
    """Iterative magnitude pruning: remove `rates` of what remains; the last step hits target."""
    del level
    if is_at_target(mask, target):
        return None
    fractions = {name: rates[name] for name in mask}
    after = sum(int(m.sum()) * (1.0 - fractions[n]) for n, m in mask.items()) / total_count(mask)
    if after < target:
        fractions = solve_fractions(mask, rates, target)
    # With a handful of weights left, rounding can make a whole level a no-op: stop there.
    return None if removes_nothing(mask, fractions) else fractions


def oneshot_fractions(
    mask: Mask, rates: Mapping[str, float], target: float, level: int
) -> Fractions | None:
    """One-shot: a single pruning step from the trained dense network straight to `target`."""
    if level > 0 or is_at_target(mask, target):
        return None
    fractions = solve_fractions(mask, rates, target)
    return None if removes_nothing(mask, fractions) else fractions


Method = Callable[[Mask, Mapping[str, float], float, int], Fractions | None]

METHODS: Registry[Method] = Registry(
    "pruning method", {"imp": imp_fractions, "oneshot": oneshot_fractions}
)


def expected_levels(
    method: str, sizes: Mapping[str, int], rates: Mapping[str, float], target: float
) -> int:
    """How many pruning levels after the dense level 0 `method` takes (for progress bars)."""
    return _simulate(method, sizes, rates, target)[0]


def check_reachable(
    method: str, sizes: Mapping[str, int], rates: Mapping[str, float], target: float
) -> None:
    """Raise TicketError when `method` with `rates` would stop before reaching `target`.

    A layer with rate 0 is never pruned, and a rate too small to remove one whole weight
    ends the search; either way the search would finish above the target and write a ticket
    denser than asked for, so refuse before any training.
    """
    _, mask = _simulate(method, sizes, rates, target)
    if not is_at_target(mask, target):
        shown = ", ".join(f"{name} {rate:g}" for name, rate in rates.items())
        raise TicketError(
            f"target density {target} is unreachable with pruning rates {shown}: "
            f"{method} would stop at {100 * kept_count(mask) / total_count(mask):.2f}% "
            "of the weights kept"
        )


def _simulate(
    method: str, sizes: Mapping[str, int], rates: Mapping[str, float], target: float
) -> tuple[int, Mask]:
    """(levels, final mask) of a search; only counts matter to a method, so no weights."""
    # A mask that keeps a prefix of each layer stands in for the real one: same counts.
    mask: Mask = {name: torch.ones(size, dtype=torch.bool) for name, size in sizes.items()}
    levels = 0
    while (fractions := METHODS[method](mask, rates, target, levels)) is not None:
        kept = {name: int(m.sum()) for name, m in mask.items()}
        mask = {
            name: torch.arange(m.numel()) < kept[name] - round(fractions[name] * kept[name])
            for name, m in mask.items()
        }
        levels += 1
    return levels, mask


# ---------------------------------------------------------------- controls


def random_mask_like(mask: Mask, generator: torch.Generator) -> Mask:
    """A uniformly random mask keeping exactly as many weights as `mask` in every layer."""
    random_mask: Mask = {}
    for name, keep in mask.items():
        order = torch.argsort(torch.rand(keep.numel(), generator=generator))
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[order[: int(keep.sum())]] = True
        random_mask[name] = flat.reshape(keep.shape)
    return random_mask


CONTROLS = ("reinit", "random")
"""The paper's controls: `reinit` = the ticket's mask with freshly initialised weights;
`random` = a random mask at the ticket's per-layer densities with the rewound weights W_k."""
