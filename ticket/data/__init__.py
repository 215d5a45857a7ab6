"""Dataset registry: a name (and optional natural sites) -> a checksummed, encoded `Dataset`."""

from collections.abc import Callable, Sequence

from ticket.data.dataset import Dataset, DatasetArgumentError
from ticket.data.heart import load_heart
from ticket.data.mnist import load_mnist
from ticket.registry import Registry

__all__ = ["DATASETS", "Dataset", "DatasetArgumentError", "load_dataset"]

# Each loader takes `sites` (None = all natural sites) and validates it against its own sites.
DATASETS: Registry[Callable[[Sequence[str] | None], Dataset]] = Registry(
    "dataset",
    {
        "heart-uci": load_heart,
        "mnist": load_mnist,
    },
)


def load_dataset(name: str, *, sites: Sequence[str] | None = None) -> Dataset:
    """Load dataset `name`, restricted to the natural `sites` listed (heart-uci hospitals)."""
    return DATASETS[name](sites)
