"""Model registry: a name and JSON-able arguments -> a seeded `nn.Module`.

Arguments are what a ticket's manifest records, so they must stay plain JSON values.
"""

import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ticket.errors import TicketError
from ticket.registry import Registry


class ModelArgumentError(TicketError):
    """A model was asked for with arguments its factory does not take or cannot use."""


class MLP(nn.Module):
    """Fully connected ReLU network; layers are named fc1..fcN so masks and bundles read well."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        _check_widths(in_features, hidden, num_classes)
        widths = [in_features, *hidden, num_classes]
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths), start=1):
            self.add_module(f"fc{index}", nn.Linear(fan_in, fan_out))
        self.depth = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # [batch, features]
        for index in range(1, self.depth + 1):
            x = getattr(self, f"fc{index}")(x)
            if index < self.depth:
                x = torch.relu(x)
        return x  # [batch, num_classes] logits


def _is_width(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_widths(in_features: Any, hidden: Any, num_classes: Any) -> None:
    # torch happily builds a zero-width layer; it only fails later, far from the argument
    # (a division by zero when densities are computed), so refuse it here by name.
    for label, value in [("in_features", in_features), ("num_classes", num_classes)]:
        if not _is_width(value):
            raise ModelArgumentError(f"argument {label}: expected an integer >= 1, got {value!r}")
    if isinstance(hidden, str | bytes) or not isinstance(hidden, Sequence):
        raise ModelArgumentError(
            f"argument hidden: expected a list of integers >= 1, got {hidden!r}"
        )
    if not all(_is_width(width) for width in hidden):
        raise ModelArgumentError(
            f"argument hidden: expected a list of integers >= 1, got {list(hidden)!r}"
        )


def heart_mlp(
    in_features: int, hidden: Sequence[int] = (64, 32), num_classes: int = 2
) -> nn.Module:
    """Clinical readings (one row of encoded heart-uci features) -> disease / no disease."""
    return MLP(in_features, hidden, num_classes)


def lenet_300_100(
    in_features: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10
) -> nn.Module:
    """Frankle & Carbin's LeNet-300-100 for 28x28 MNIST digits (266,200 weights)."""
    return MLP(in_features, hidden, num_classes)


MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model",
    {
        "heart-mlp": heart_mlp,
        "lenet-300-100": lenet_300_100,
    },
)


def build_model(name: str, args: Mapping[str, Any], seed: int) -> nn.Module:
    """Build model `name` with `args`; the same (name, args, seed) gives bit-identical weights.

    The global torch RNG is forked, so building a model never disturbs the caller's randomness.
    """
    factory = MODELS[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ModelArgumentError(
            f"model {name!r} takes no argument(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return factory(**args)
        except ModelArgumentError as error:
            raise ModelArgumentError(f"model {name!r}: {error}") from error
        except (TypeError, ValueError, RuntimeError) as error:
            # torch's C++ errors append a stack trace after the first line.
            reason = next(iter(str(error).splitlines()), type(error).__name__)
            raise ModelArgumentError(
                f"model {name!r} cannot be built from {dict(args)}: {reason}"
            ) from error
