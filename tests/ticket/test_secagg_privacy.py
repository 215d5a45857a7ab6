"""Distributed DP's device side: the Skellam mechanism's clipping, integer rounding within the
sensitivity bound, noise, and the ring that holds a cohort's sum; and a whole secure round
whose unmasked sum is exactly the sum of the devices' privatised integers."""

import math

import numpy as np
import pytest

from tests.ticket.secagg_sim import Drops, Simulation
from ticket.secagg.errors import MessageError, ParamsError
from ticket.secagg.params import SecAggParams
from ticket.secagg.privacy import (
    NOISE_TAIL,
    SkellamParams,
    clip_l2,
    decode_sum,
    privatize,
    round_within,
    rounded_norm_bound,
    skellam_noise,
)

LENGTH = 400


def test_clipping_scales_down_only_what_is_too_long() -> None:
    long, norm = clip_l2(np.array([3.0, 4.0]), 1.0)
    assert norm == 5.0 and np.allclose(long, [0.6, 0.8])
    short, _ = clip_l2(np.array([0.3, 0.4]), 1.0)
    assert np.allclose(short, [0.3, 0.4])
    zero, _ = clip_l2(np.zeros(3), 1.0)
    assert np.array_equal(zero, np.zeros(3))


def test_the_plan_puts_the_sums_noise_at_z_times_the_sensitivity() -> None:
    plan = SkellamParams.plan(noise_multiplier=1.5, clip_norm=0.2, length=LENGTH, min_survivors=9)
    bound = plan.l2_sensitivity(LENGTH)
    # C s = 8 sqrt(k): the bound is a little above it, below the hard C s + sqrt(k).
    assert 0.2 * plan.scale == pytest.approx(8 * math.sqrt(LENGTH))
    assert 0.2 * plan.scale < bound < 0.2 * plan.scale * 1.01
    assert plan.noise_multiplier(9, LENGTH) == pytest.approx(1.5)
    assert plan.noise_multiplier(16, LENGTH) == pytest.approx(2.0)  # dropouts never weaken it
    assert plan.l1_sensitivity(LENGTH) == pytest.approx(min(bound * math.sqrt(LENGTH), bound**2))


def test_the_rounding_bound_is_never_above_the_hard_one_and_rarely_exceeded() -> None:
    assert rounded_norm_bound(0.0, 100) <= 10.0
    assert rounded_norm_bound(50.0, 100) <= 60.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=LENGTH)
    x *= 20 / np.linalg.norm(x)
    bound = rounded_norm_bound(20.0, LENGTH)
    norms = [np.linalg.norm(np.floor(x + rng.random(LENGTH))) for _ in range(2000)]
    assert np.mean(np.array(norms) > bound) < math.exp(-0.5)  # beta


def test_conditional_rounding_is_within_its_bound_and_unbiased() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, LENGTH)
    bound = rounded_norm_bound(float(np.linalg.norm(x)), LENGTH)
    draws = np.array([round_within(x, bound, rng) for _ in range(3000)])  # [3000, k]
    assert np.all(np.linalg.norm(draws, axis=1) <= bound)
    assert np.all(np.abs(draws - x) < 1)
    assert np.abs(draws.mean(axis=0) - x).max() < 0.1  # ~5 sigma of 0.5 / sqrt(3000)


def test_a_rounding_that_cannot_meet_its_bound_is_refused() -> None:
    with pytest.raises(ParamsError, match="exceeded its L2 bound"):
        round_within(np.full(10, 0.5), 0.1, np.random.default_rng(0))


def test_skellam_noise_is_integer_centred_with_the_asked_variance() -> None:
    noise = skellam_noise(200_000, 50.0, np.random.default_rng(2))
    assert noise.dtype == np.int64
    assert abs(noise.mean()) < 0.1
    assert noise.var() == pytest.approx(50.0, rel=0.02)
    assert np.array_equal(skellam_noise(5, 0.0, np.random.default_rng(2)), np.zeros(5))


def test_privatize_is_the_clipped_rounded_update_plus_noise_mod_the_ring() -> None:
    params = SkellamParams(clip_norm=0.5, scale=100.0, noise_var=4.0)
    update = np.random.default_rng(3).normal(0, 0.1, LENGTH)
    words = privatize(
        update,
        params,
        bits=20,
        rounding_rng=np.random.default_rng(4),
        noise_rng=np.random.default_rng(5),
    )
    assert words.dtype == np.uint32 and words.max() < 2**20
    decoded = decode_sum(words, 20, params.scale)  # one device's values, in float units
    clipped, _ = clip_l2(update, 0.5)
    # rounding (< 1) plus noise (sd 2): within NOISE_TAIL deviations + 1 integer step
    assert np.abs(decoded - clipped).max() <= (NOISE_TAIL * 2 + 1) / params.scale
    residual = (decoded - clipped) * params.scale
    assert residual.var() == pytest.approx(4.0 + 1 / 6, rel=0.3)  # noise + rounding


def test_the_noise_comes_from_the_noise_rng_alone() -> None:
    params = SkellamParams(clip_norm=1.0, scale=50.0, noise_var=9.0)
    update = np.full(LENGTH, 0.01)

    def run(rounding: int, noise: int) -> np.ndarray:
        return privatize(
            update,
            params,
            bits=16,
            rounding_rng=np.random.default_rng(rounding),
            noise_rng=np.random.default_rng(noise),
        )

    assert np.array_equal(run(1, 2), run(1, 2))
    assert not np.array_equal(run(1, 2), run(1, 3))


def test_the_ring_of_a_cohort_holds_the_sum_of_its_extreme_inputs() -> None:
    """n devices each at the worst coordinate (their whole norm on it) plus a noise tail: the
    centre-lifted sum is exact."""
    plan = SkellamParams.plan(noise_multiplier=1.0, clip_norm=1.0, length=LENGTH, min_survivors=2)
    n = 50
    levels = plan.levels(LENGTH)
    bits = SecAggParams(clip=1.0, levels=levels).modulus_bits(n)
    value = plan.l2_sensitivity(LENGTH) + NOISE_TAIL * math.sqrt(plan.noise_var)
    per_device = int(value)
    total = (n * per_device) % (1 << bits)
    assert decode_sum(np.array([total]), bits, 1.0)[0] == n * per_device
    assert decode_sum(np.array([(-n * per_device) % (1 << bits)]), bits, 1.0)[0] == -n * per_device


def test_a_secure_round_sums_the_privatised_integers_exactly_under_dropouts() -> None:
    plan = SkellamParams.plan(noise_multiplier=0.5, clip_norm=1.0, length=60, min_survivors=4)
    params = SecAggParams(clip=1.0, levels=plan.levels(60))
    sim = Simulation(nodes=(2, 3, 4, 5, 6, 7), length=60, params=params, dp=plan)

    result = sim.run(Drops(before_mask=(5,)))

    survivors = (2, 3, 4, 6, 7)
    assert result.survivors == survivors
    expected = sum(sim.levels[u].astype(np.int64) for u in survivors) % (1 << result.bits)
    np.testing.assert_array_equal(result.total.astype(np.int64), expected)
    # Decoded: the sum of clipped inputs plus the survivors' noise (sd sqrt(5 mu) / s).
    got = decode_sum(result.total, result.bits, plan.scale)
    clipped = sum(clip_l2(sim.inputs[u], 1.0)[0] for u in survivors)
    spread = math.sqrt(5 * plan.noise_var) / plan.scale
    assert np.abs(got - clipped).max() < 6 * spread


def test_a_node_refuses_a_ring_too_small_for_its_dp_values() -> None:
    plan = SkellamParams.plan(noise_multiplier=0.5, clip_norm=1.0, length=60, min_survivors=4)
    small = SecAggParams(clip=1.0, levels=plan.levels(60) - 2)
    sim = Simulation(nodes=(2, 3, 4, 5), length=60, params=small, dp=plan)
    with pytest.raises(MessageError, match="cannot hold this device's DP values"):
        sim.run()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: SkellamParams.plan(
                noise_multiplier=0.0, clip_norm=1.0, length=4, min_survivors=2
            ),
            "noise multiplier must be positive",
        ),
        (lambda: SkellamParams(-1.0, 1.0, 1.0), "clip norm must be a positive"),
        (lambda: SkellamParams(1.0, math.nan, 1.0), "DP scale must be a positive"),
        (lambda: SkellamParams(1.0, 1.0, -1.0), "noise variance must be >= 0"),
        (
            lambda: SkellamParams.plan(
                noise_multiplier=1.0, clip_norm=1.0, length=4, min_survivors=0
            ),
            "min_survivors must be >= 1",
        ),
        (lambda: SkellamParams(1.0, 1.0, 1e14).levels(4), "at most 16777216"),
        (lambda: clip_l2(np.array([np.nan]), 1.0), "finite"),
        (lambda: clip_l2(np.ones((2, 2)), 1.0), "1-D"),
        (lambda: rounded_norm_bound(1.0, 0), "vector length must be a positive"),
    ],
)
def test_bad_parameters_are_refused(call: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        call()  # type: ignore[operator]
