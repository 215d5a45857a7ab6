"""Distributed DP's device side: clipping, each device's noise share, the sum's multiplier."""

import math

import numpy as np
import pytest

from ticket.secagg.errors import ParamsError
from ticket.secagg.privacy import (
    clip_l2,
    device_noise_std,
    effective_noise_multiplier,
    privatize,
    saturation_margin,
)


def test_clipping_scales_down_only_what_is_too_long() -> None:
    long, norm = clip_l2(np.array([3.0, 4.0]), 1.0)
    assert norm == 5.0 and np.allclose(long, [0.6, 0.8])
    short, _ = clip_l2(np.array([0.3, 0.4]), 1.0)
    assert np.array_equal(short, np.array([0.3, 0.4], dtype=np.float32))
    zero, _ = clip_l2(np.zeros(3), 1.0)
    assert not zero.any()


def test_the_sum_of_the_minimum_survivors_carries_the_planned_noise() -> None:
    sigma = device_noise_std(1.5, 0.2, min_survivors=9)
    assert sigma == pytest.approx(1.5 * 0.2 / 3)
    assert effective_noise_multiplier(sigma, 9, 0.2) == pytest.approx(1.5)
    # More survivors than the minimum: more noise in the sum, never less.
    assert effective_noise_multiplier(sigma, 16, 0.2) == pytest.approx(2.0)


def test_privatize_clips_then_adds_noise_of_the_given_deviation() -> None:
    rng = np.random.default_rng(0)
    delta = np.full(200_000, 1.0)  # norm ~447: clipped to 1, so each value ~0.0022

    noisy = privatize(delta, clip_norm=1.0, noise_std=0.05, rng=rng)

    assert noisy.dtype == np.float32 and noisy.shape == delta.shape
    noise = noisy - 1.0 / math.sqrt(delta.size)
    assert np.std(noise) == pytest.approx(0.05, rel=0.01)
    assert abs(np.mean(noise)) < 4 * 0.05 / math.sqrt(delta.size)


def test_two_devices_with_the_same_update_send_different_noise() -> None:
    delta = np.ones(64)
    one = privatize(delta, clip_norm=1.0, noise_std=0.1, rng=np.random.default_rng(1))
    two = privatize(delta, clip_norm=1.0, noise_std=0.1, rng=np.random.default_rng(2))
    assert not np.array_equal(one, two)


def test_saturation_margin_counts_noise_deviations_in_the_quantiser_range() -> None:
    assert saturation_margin(0.25, 0.05) == pytest.approx(5.0)
    assert saturation_margin(0.25, 0.0) == math.inf


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: device_noise_std(0.0, 1.0, 2), "noise multiplier must be positive"),
        (lambda: device_noise_std(1.0, -1.0, 2), "clip norm must be a positive"),
        (lambda: device_noise_std(1.0, 1.0, 0), "min_survivors must be >= 1"),
        (lambda: clip_l2(np.array([np.nan]), 1.0), "finite"),
        (lambda: clip_l2(np.ones((2, 2)), 1.0), "1-D"),
        (
            lambda: privatize(
                np.ones(2), clip_norm=1.0, noise_std=-1.0, rng=np.random.default_rng()
            ),
            "noise std must be >= 0",
        ),
    ],
)
def test_bad_parameters_are_refused(call: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        call()  # type: ignore[operator]
