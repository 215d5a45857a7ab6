"""The `Dataset` every loader returns, and the site, checksum and fingerprint helpers they share."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ticket.errors import DatasetUnavailableError, TicketError, UnknownNameError


class DatasetArgumentError(TicketError, ValueError):
    """A dataset was asked for with arguments it cannot honour (empty or duplicate sites)."""


# eq=False: comparing tensors field by field is ambiguous; the fingerprint identifies a dataset.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split with its natural sites, feature names and the recipe that encoded it.

    `site_train[i]` indexes `site_names`; a dataset without natural sites has one site, "all".
    `preprocessing` is plain JSON: what a device needs to encode its own raw readings the same way.
    """

    name: str
    x_train: torch.Tensor  # float32 [N, F...]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor  # float32 [M, F...]
    y_test: torch.Tensor  # int64 [M]
    site_train: npt.NDArray[np.int64]  # [N]
    site_test: npt.NDArray[np.int64]  # [M]
    site_names: tuple[str, ...]
    num_classes: int
    feature_names: tuple[str, ...]
    fingerprint: str
    preprocessing: Mapping[str, Any]

    @property
    def num_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:], dtype=np.int64))

    def model_args(self) -> dict[str, Any]:
        """Arguments for the model registry that fit this data's input width and classes."""
        return {"in_features": self.num_features, "num_classes": self.num_classes}

    def first_train_rows(self, rows: int) -> "Dataset":
        """This dataset trained on its first `rows` training rows only; the test rows stay.

        The encoding (`preprocessing`) is the full dataset's; the fingerprint says which rows,
        so a ticket found on the subset never passes for one found on all of them.
        """
        available = len(self.y_train)
        if not 1 <= rows <= available:
            raise DatasetArgumentError(
                f"train rows: {self.name} has {available} training rows, asked for {rows}"
            )
        return replace(
            self,
            x_train=self.x_train[:rows],
            y_train=self.y_train[:rows],
            site_train=self.site_train[:rows],
            fingerprint=fingerprint({"subset_of": self.fingerprint, "first_train_rows": rows}),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for a ticket manifest: which data, how much of it, how encoded."""
        train_counts = np.bincount(self.site_train, minlength=len(self.site_names))
        test_counts = np.bincount(self.site_test, minlength=len(self.site_names))
        return {
            "name": self.name,
            "sites": list(self.site_names),
            "rows": {"train": len(self.y_train), "test": len(self.y_test)},
            "rows_per_site": {
                site: {"train": int(train_counts[i]), "test": int(test_counts[i])}
                for i, site in enumerate(self.site_names)
            },
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "fingerprint": self.fingerprint,
            # A deep copy through JSON, so a manifest can never alias (or mutate) the dataset.
            "preprocessing": json.loads(json.dumps(self.preprocessing)),
        }


def select_sites(
    dataset: str, requested: Sequence[str] | None, available: tuple[str, ...]
) -> tuple[str, ...]:
    """The requested natural sites in the dataset's own order (all of them for None).

    Canonical order keeps site indices and fingerprints independent of how the caller listed them.
    """
    if requested is None:
        return available
    if not available:
        raise DatasetArgumentError(f"dataset {dataset!r} has no natural sites; leave sites unset")
    # A bare string is a Sequence of characters; "Cleveland" must not mean {"C", "l", ...}.
    if isinstance(requested, str):
        raise DatasetArgumentError(
            f"sites must be a list of site names, got the string {requested!r}"
        )
    if not requested:
        raise DatasetArgumentError(f"sites is empty; choose from: {', '.join(available)}")
    for site in requested:
        if site not in available:
            raise UnknownNameError(f"{dataset} site", site, list(available))
    if len(set(requested)) != len(requested):
        raise DatasetArgumentError(f"sites lists a site more than once: {list(requested)}")
    return tuple(site for site in available if site in requested)


def verify_sha256(data: bytes, expected: str, name: str) -> None:
    """Raise `DatasetUnavailableError` naming `name` unless `data` hashes to `expected`."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DatasetUnavailableError(
            f"{name}: sha256 {actual} does not match the pinned {expected}; "
            "the file is damaged or not the expected release"
        )


def fingerprint(recipe: Mapping[str, Any]) -> str:
    """sha256 hex of a canonical JSON recipe (source checksums, preprocessing version, sites)."""
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
