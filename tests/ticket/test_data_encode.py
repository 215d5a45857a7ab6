"""Encoding a dataset with another recipe: a ticket found on one hospital reads all four."""

import numpy as np
import pytest
import torch

from ticket.data import load_dataset
from ticket.data.encode import encode_with, load_encoded
from ticket.errors import TicketError


def test_the_datasets_own_recipe_changes_nothing() -> None:
    pooled = load_dataset("heart-uci")

    assert encode_with(pooled, pooled.preprocessing) is pooled


def test_one_hospitals_recipe_encodes_its_rows_as_that_hospital_does() -> None:
    cleveland = load_dataset("heart-uci", sites=["Cleveland"])
    pooled = load_dataset("heart-uci")

    encoded = load_encoded("heart-uci", cleveland.preprocessing)

    assert encoded.preprocessing == cleveland.preprocessing
    assert encoded.x_test.shape == (len(pooled.y_test), cleveland.x_test.shape[1])
    torch.testing.assert_close(encoded.y_test, pooled.y_test, rtol=0, atol=0)
    site = pooled.site_names.index("Cleveland")
    torch.testing.assert_close(
        encoded.x_test[torch.from_numpy(pooled.site_test == site)], cleveland.x_test
    )
    torch.testing.assert_close(
        encoded.x_train[torch.from_numpy(pooled.site_train == site)], cleveland.x_train
    )
    assert not np.array_equal(encoded.x_test.numpy(), pooled.x_test.numpy())


def test_a_recipe_for_another_dataset_is_refused() -> None:
    pooled = load_dataset("heart-uci")
    cleveland = load_dataset("heart-uci", sites=["Cleveland"])
    other = type(pooled)(**{**vars(pooled), "name": "mnist"})

    with pytest.raises(TicketError, match="mnist: cannot re-encode"):
        encode_with(other, cleveland.preprocessing)
