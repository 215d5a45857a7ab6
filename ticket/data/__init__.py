"""Dataset registry: a name (and optional natural sites) -> a checksummed, encoded `Dataset`.

Loaders import their modules (and torch) when called, not when this package is imported: the
device's ingest path reads `ticket.data.heart_encoding` without paying for torch.
"""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ticket.registry import Registry

if TYPE_CHECKING:
    from ticket.data.dataset import Dataset, DatasetArgumentError

__all__ = ["DATASETS", "Dataset", "DatasetArgumentError", "load_dataset"]


def _load_heart(sites: Sequence[str] | None) -> "Dataset":
    from ticket.data.heart import load_heart

    return load_heart(sites)


def _load_mnist(sites: Sequence[str] | None) -> "Dataset":
    from ticket.data.mnist import load_mnist

    return load_mnist(sites)


# Each loader takes `sites` (None = all natural sites) and validates it against its own sites.
DATASETS: Registry[Callable[[Sequence[str] | None], "Dataset"]] = Registry(
    "dataset",
    {
        "heart-uci": _load_heart,
        "mnist": _load_mnist,
    },
)


def load_dataset(name: str, *, sites: Sequence[str] | None = None) -> "Dataset":
    """Load dataset `name`, restricted to the natural `sites` listed (heart-uci hospitals)."""
    return DATASETS[name](sites)


def __getattr__(name: str) -> Any:
    if name in ("Dataset", "DatasetArgumentError"):  # lazily: ticket.data.dataset imports torch
        from ticket.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
