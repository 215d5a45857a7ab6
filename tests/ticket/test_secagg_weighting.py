"""Weighted inputs under secure aggregation: the sum gives the example-weighted mean."""

import numpy as np
import pytest

from ticket.fedavg import weighted_mean
from ticket.secagg import RoundAbortedError, RoundSecrets, SecAggParams
from ticket.secagg.errors import MessageError, ParamsError
from ticket.secagg.quantize import dequantize_sum, quantize
from ticket.secagg.weighting import (
    LOSS_CAP,
    mean_error_bound,
    node_weight,
    read_sum,
    weighted_input,
)

PARAMS = SecAggParams(clip=0.25, levels=2**14)


def test_the_quantised_sum_gives_the_weighted_mean_within_the_bound() -> None:
    rng = np.random.default_rng(0)
    examples, losses = [120, 35, 300, 77], [0.7, 0.2, 1.1, 0.5]
    deltas = [rng.normal(0, 0.02, 500).astype(np.float32) for _ in examples]
    inputs = [
        weighted_input(d, examples=n, loss=loss, params=PARAMS, cap=400)
        for d, n, loss in zip(deltas, examples, losses, strict=True)
    ]
    levels = sum(quantize(x, PARAMS, rng).astype(np.int64) for x in inputs)

    mean, weight, loss = read_sum(dequantize_sum(levels, len(inputs), PARAMS), PARAMS)

    exact = weighted_mean(deltas, examples)
    bound = mean_error_bound(PARAMS, nodes=4, weight=sum(examples) / 400)
    assert np.abs(mean - exact).max() <= bound
    assert weight == pytest.approx(sum(examples) / 400, abs=4 * 2 * 0.25 / (2**14 - 1) / 0.25)
    assert loss == pytest.approx(np.average(losses, weights=examples), abs=1e-2)


def test_weights_saturate_at_the_cap_and_losses_at_the_loss_cap() -> None:
    assert node_weight(50, 100) == 0.5 and node_weight(5000, 100) == 1.0
    x = weighted_input(np.zeros(3), examples=5000, loss=1e9, params=PARAMS, cap=100)
    np.testing.assert_allclose(x[-2:], [PARAMS.clip, PARAMS.clip])  # w = 1, loss -> LOSS_CAP
    assert LOSS_CAP > 1
    with pytest.raises(ParamsError):
        node_weight(0, 100)


def test_a_sum_without_weight_aborts_instead_of_dividing_noise() -> None:
    with pytest.raises(RoundAbortedError):
        read_sum(np.zeros(5, np.float32), PARAMS)


def test_round_secrets_round_trip_and_reject_tampering() -> None:
    secrets = RoundSecrets(7, 3, 101, b"\1" * 32, b"\2" * 32, b"\3" * 32)

    assert RoundSecrets.from_bytes(secrets.to_bytes()) == secrets
    with pytest.raises(MessageError):
        RoundSecrets.from_bytes(secrets.to_bytes().replace(b"01010101", b"0101"))
    with pytest.raises(MessageError):
        RoundSecrets.from_bytes(b"{}")
