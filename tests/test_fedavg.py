import re

import numpy as np
import pytest

from ticket.errors import TicketError
from ticket.fedavg import weighted_mean, weighted_metrics


def test_weighted_mean_weights_by_examples() -> None:
    a = np.array([1.0, 0.0, -2.0], dtype=np.float32)
    b = np.array([3.0, 4.0, 2.0], dtype=np.float32)

    mean = weighted_mean([a, b], [1, 3])

    assert mean.dtype == np.float32
    np.testing.assert_array_equal(mean, np.array([2.5, 3.0, 1.0], dtype=np.float32))


def test_one_vector_is_returned_unchanged() -> None:
    vector = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    np.testing.assert_array_equal(weighted_mean([vector], [7]), vector)


def test_order_of_replies_does_not_change_the_result() -> None:
    rng = np.random.default_rng(1)
    vectors = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    counts = [3, 100, 7, 55, 1]

    forward = weighted_mean(vectors, counts)
    backward = weighted_mean(vectors[::-1], counts[::-1])

    np.testing.assert_array_equal(forward, backward)


def test_matches_a_float64_oracle() -> None:
    rng = np.random.default_rng(2)
    vectors = [rng.standard_normal(200).astype(np.float32) for _ in range(4)]
    counts = [226, 208, 75, 134]
    oracle = np.average(np.stack(vectors).astype(np.float64), axis=0, weights=counts)

    np.testing.assert_allclose(weighted_mean(vectors, counts), oracle, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("vectors", "counts", "message"),
    [
        ([], [], "no vectors"),
        ([np.zeros(3, np.float32)], [1, 2], "1 vectors but 2 example counts"),
        ([np.zeros(3, np.float32), np.zeros(4, np.float32)], [1, 1], "vector 1 has shape [4]"),
        ([np.zeros((3, 1), np.float32)], [1], "vector 0 has shape [3, 1]"),
        ([np.zeros(3, np.float32)], [0], "example count 0 must be an integer >= 1"),
        ([np.zeros(3, np.float32)], [True], "example count 0 must be an integer >= 1"),
        ([np.zeros(3, np.float32)], [2.5], "example count 0 must be an integer >= 1"),
    ],
)
def test_bad_input_is_refused(vectors: list[np.ndarray], counts: list[int], message: str) -> None:
    with pytest.raises(TicketError, match=re.escape(message)):
        weighted_mean(vectors, counts)


def test_weighted_metrics_averages_each_metric_by_examples() -> None:
    reports = [{"loss": 1.0, "accuracy": 0.5}, {"loss": 0.0, "accuracy": 1.0}]

    means = weighted_metrics(reports, [1, 3])

    assert means == {"accuracy": 0.875, "loss": 0.25}


def test_a_metric_some_report_lacks_is_left_out_unless_optional() -> None:
    reports = [{"loss": 1.0, "auc": 0.5}, {"loss": 0.5}, {"loss": 0.0, "auc": 1.0}]

    assert weighted_metrics(reports, [2, 2, 6]) == {"loss": 0.3}
    # Optional: over the reports that have it, weighted by their examples only.
    assert weighted_metrics(reports, [2, 2, 6], optional={"auc"}) == {"auc": 0.875, "loss": 0.3}


def test_weighted_metrics_of_nothing_is_empty_and_counts_must_match() -> None:
    assert weighted_metrics([], []) == {}
    with pytest.raises(TicketError, match="2 reports but 1 example counts"):
        weighted_metrics([{}, {}], [1])
