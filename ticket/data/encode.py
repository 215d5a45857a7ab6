"""A registered dataset with its features encoded by a given preprocessing recipe.

A ticket records the preprocessing fitted on the data it was found on (e.g. one hospital);
anyone evaluating or training that ticket on other rows must encode them the same way.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ticket.data import Dataset, load_dataset
from ticket.data.heart import HEART_SITES, HeartPreprocessor, is_test_row, read_heart_rows
from ticket.errors import TicketError


def load_encoded(name: str, preprocessing: Mapping[str, Any]) -> Dataset:
    """Dataset `name` (every site, its own row order) encoded by `preprocessing`.

    Raises TicketError when the dataset cannot be encoded by that recipe.
    """
    return encode_with(load_dataset(name), preprocessing)


def encode_with(dataset: Dataset, preprocessing: Mapping[str, Any]) -> Dataset:
    """`dataset` with x_train/x_test re-encoded by `preprocessing`; the same rows, same order."""
    if dict(preprocessing) == dict(dataset.preprocessing):
        return dataset
    if dataset.name != "heart-uci":
        raise TicketError(f"{dataset.name}: cannot re-encode with another preprocessing recipe")
    if set(dataset.site_names) - set(HEART_SITES):
        raise TicketError(f"heart-uci: unknown sites {sorted(dataset.site_names)}")
    encoder = HeartPreprocessor.from_json(preprocessing)
    # The rows of load_heart with the dataset's sites selected, in its order.
    rows = [row for row in read_heart_rows() if row["dataset"] in dataset.site_names]
    train = [row for row in rows if not is_test_row(row["dataset"], row["id"])]
    test = [row for row in rows if is_test_row(row["dataset"], row["id"])]
    if not np.array_equal(encoder.labels(train), dataset.y_train.numpy()) or not np.array_equal(
        encoder.labels(test), dataset.y_test.numpy()
    ):
        raise TicketError("heart-uci: raw rows do not line up with the loaded dataset")
    return dataclasses.replace(
        dataset,
        x_train=torch.from_numpy(encoder.transform(train)),  # float32 [N, F]
        x_test=torch.from_numpy(encoder.transform(test)),  # float32 [M, F]
        feature_names=encoder.feature_names,
        preprocessing=encoder.to_json(),
    )
