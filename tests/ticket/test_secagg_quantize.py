"""Quantisation (clip, stochastic rounding, decoding a sum) and bit-packing."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ticket.errors import CodecError
from ticket.secagg import (
    ParamsError,
    SecAggParams,
    dequantize_mean,
    dequantize_sum,
    pack_bits,
    packed_size,
    quantization_error,
    quantize,
    unpack_bits,
)
from ticket.secagg.params import MAX_LEVELS
from ticket.secagg.quantize import TAIL_PROBABILITY, choose_quantization, level_step

PARAMS = SecAggParams(clip=0.5, levels=2**8)


@settings(max_examples=40, deadline=None)
@given(
    vectors=st.integers(1, 6).flatmap(
        lambda n: st.lists(
            hnp.arrays(np.float32, 17, elements=st.floats(-0.75, 0.75, width=32)),
            min_size=n,
            max_size=n,
        )
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_decoded_sum_is_within_one_level_per_vector(vectors: list[np.ndarray], seed: int) -> None:
    rng = np.random.default_rng(seed)
    levels = [quantize(v, PARAMS, rng) for v in vectors]
    total = np.sum([lv.astype(np.int64) for lv in levels], axis=0)
    clipped = np.sum([np.clip(v.astype(np.float64), -0.5, 0.5) for v in vectors], axis=0)

    estimate = dequantize_sum(total, len(vectors), PARAMS)
    error = quantization_error(estimate, clipped)

    assert all(((lv >= 0) & (lv < PARAMS.levels)).all() for lv in levels)
    # Rounding moves each value by less than one level; float32 output adds a little.
    assert error.max_abs <= len(vectors) * level_step(PARAMS) + 1e-5
    assert error.mean_abs <= error.max_abs


def test_stochastic_rounding_is_unbiased() -> None:
    x = np.full(200_000, 0.123, np.float32)
    levels = quantize(x, PARAMS, np.random.default_rng(0))
    decoded = dequantize_sum(levels, 1, PARAMS)
    assert abs(float(decoded.astype(np.float64).mean()) - 0.123) < 1e-4
    assert len(np.unique(levels)) == 2  # the two levels either side of 0.123


def test_the_ends_of_the_range_are_exact_and_beyond_is_clipped() -> None:
    levels = quantize(np.array([-0.5, 0.5, -9.0, 9.0]), PARAMS, np.random.default_rng(0))
    assert levels.tolist() == [0, 255, 0, 255]


def test_the_mean_divides_by_the_count() -> None:
    total = np.array([255 * 3, 0], np.uint32)  # three vectors, all at +clip then -clip
    np.testing.assert_allclose(dequantize_mean(total, 3, PARAMS), [0.5, -0.5])
    with pytest.raises(ParamsError):
        dequantize_mean(total, 0, PARAMS)


@pytest.mark.parametrize("bad", [[np.nan], [np.inf], [[0.0]]])
def test_quantize_refuses_nan_inf_and_matrices(bad: list[float]) -> None:
    with pytest.raises(ParamsError):
        quantize(np.array(bad), PARAMS, np.random.default_rng(0))


def test_quantization_error_reports_max_and_mean() -> None:
    error = quantization_error([1.0, 2.0, 3.0], [1.0, 2.5, 2.0])
    assert (error.max_abs, error.mean_abs) == (1.0, 0.5)
    assert quantization_error([], []).max_abs == 0.0


# ---------------------------------------------------------------- levels per cohort


def _rms(levels: int, n: int) -> float:
    """RMS error of a mean of n stochastically rounded values, as a fraction of the clip."""
    return 1 / ((levels - 1) * np.sqrt(n))


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 100_000), target=st.floats(1e-5, 0.5))
def test_the_chosen_levels_are_the_fewest_that_meet_the_target(n: int, target: float) -> None:
    choice = choose_quantization(n, clip=0.25, length=1000, target_error=target)

    assert choice.error == pytest.approx(_rms(choice.levels, n))
    assert choice.error <= target * (1 + 1e-9)
    assert choice.levels == 2 or _rms(choice.levels - 1, n) > target
    assert choice.modulus_bits == SecAggParams(clip=0.25, levels=choice.levels).modulus_bits(n)
    assert choice.masked_bytes == packed_size(1000, choice.modulus_bits)


def test_a_larger_cohort_needs_fewer_levels_but_a_wider_sum() -> None:
    small, large = (
        choose_quantization(n, clip=1.0, length=26_000, target_error=1e-3) for n in (10, 1000)
    )

    assert (small.levels, large.levels) == (318, 33)
    assert (small.modulus_bits, large.modulus_bits) == (12, 16)
    assert small.modulus_bits < SecAggParams(clip=1.0).modulus_bits(10)  # q = 16384: 18 bits


def test_the_decoded_mean_meets_the_rms_target_and_the_tail_bound() -> None:
    n, k, clip, target = 200, 4000, 0.5, 2e-3
    choice = choose_quantization(n, clip=clip, length=k, target_error=target)
    params = SecAggParams(clip=clip, levels=choice.levels)
    rng = np.random.default_rng(3)
    inputs = rng.uniform(-clip, clip, (n, k))  # [n, k]
    total = sum(quantize(x, params, rng).astype(np.int64) for x in inputs)

    error = (dequantize_mean(total, n, params) - inputs.mean(axis=0)) / clip  # [k]

    assert np.sqrt(np.mean(error**2)) <= target
    assert np.abs(error).max() <= choice.tail_error
    assert TAIL_PROBABILITY < 1e-3


def test_the_worst_case_bound_holds_without_counting_on_averaging() -> None:
    n, clip, target = 50, 0.5, 0.01
    choice = choose_quantization(n, clip=clip, length=10, target_error=target, stochastic=False)
    params = SecAggParams(clip=clip, levels=choice.levels)
    value = -clip + 0.001 * level_step(params)  # just above level 0
    # The worst rounding: every device's value rounds up to level 1 at once (off by 0.999 steps).
    total = np.full(10, n, np.int64)

    error = np.abs(dequantize_mean(total, n, params) - value) / clip

    assert choice.levels - 1 >= 2 / target
    assert choice.error == choice.tail_error <= target
    assert error.max() == pytest.approx(0.999 * choice.error, rel=1e-3)
    assert error.max() <= choice.error


def test_a_smaller_mean_weight_asks_for_more_levels() -> None:
    full = choose_quantization(100, clip=1.0, length=10, target_error=1e-3)
    half = choose_quantization(100, clip=1.0, length=10, target_error=1e-3, mean_weight=0.5)

    assert half.levels - 1 == 2 * (full.levels - 1)


@pytest.mark.parametrize(
    ("n", "target", "match"),
    [
        (2, 1e-9, r"needs 707106783 quantisation levels; at most 16777216 \(2\^24\)"),
        (10**6, 1e-7, r"needs 34 bits; a masked value holds at most 32: raise the target"),
    ],
)
def test_a_target_no_quantisation_can_meet_is_refused_saying_why(
    n: int, target: float, match: str
) -> None:
    with pytest.raises(ParamsError, match=match):
        choose_quantization(n, clip=1.0, length=100, target_error=target)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"cohort_size": 1}, "at least 2 devices"),
        ({"length": 0}, "vector length"),
        ({"target_error": 0.0}, "positive fraction of the clip"),
        ({"target_error": float("nan")}, "positive fraction of the clip"),
        ({"clip": -1.0}, "clip must be"),
        ({"mean_weight": 1.5}, "mean weight"),
    ],
)
def test_choose_quantization_checks_its_arguments(options: dict[str, float], match: str) -> None:
    arguments = {"cohort_size": 10, "clip": 1.0, "length": 10, "target_error": 1e-3, **options}
    n = arguments.pop("cohort_size")
    with pytest.raises(ParamsError, match=match):
        choose_quantization(n, **arguments)  # type: ignore[arg-type]
    assert MAX_LEVELS == 2**24


# ---------------------------------------------------------------- bit-packing


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 32), data=st.data())
def test_bit_packing_round_trips_at_exact_size(bits: int, data: st.DataObject) -> None:
    values = np.array(
        data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=50)), dtype=np.uint32
    )
    packed = pack_bits(values, bits)
    assert len(packed) == packed_size(values.size, bits) == (values.size * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(packed, bits, values.size), values)


def test_the_bit_layout_is_pinned() -> None:
    # Value i at bits [3i, 3i + 3), least significant first: 0b101, 0b011, 0b111 -> 0b111_011_101.
    assert pack_bits(np.array([5, 3, 7]), 3) == bytes([0b11011101, 0b1])


def test_unpack_refuses_wrong_lengths_and_padding() -> None:
    packed = pack_bits(np.array([5, 3, 7]), 3)
    with pytest.raises(CodecError, match="expected 2"):
        unpack_bits(packed + b"\x00", 3, 3)
    with pytest.raises(CodecError, match="expected 2"):
        unpack_bits(packed[:1], 3, 3)
    with pytest.raises(CodecError, match="padding"):
        unpack_bits(packed[:1] + b"\x81", 3, 3)


@pytest.mark.parametrize(("values", "bits"), [([8], 3), ([-1], 3), ([0], 0), ([0], 33), ([[1]], 3)])
def test_pack_refuses_values_or_widths_out_of_range(values: list[int], bits: int) -> None:
    with pytest.raises(CodecError):
        pack_bits(np.array(values), bits)
