"""The privacy accountant: dp-accounting's RDP accountant over a run's released rounds."""

import math

import pytest

from server.privacy import DpPlan, charged_rounds, epsilon


def _rdp_bound(multipliers: list[float], delta: float) -> float:
    """Textbook RDP of Gaussian mechanisms, sum alpha / (2 z^2), with the classic conversion
    eps = rdp + log(1/delta) / (alpha - 1) minimised over integer orders: an upper bound that
    dp-accounting's (tighter) conversion must not exceed."""
    best = math.inf
    for alpha in range(2, 2048):
        rdp = sum(alpha / (2 * z * z) for z in multipliers)
        best = min(best, rdp + math.log(1 / delta) / (alpha - 1))
    return best


def test_epsilon_is_nothing_for_no_rounds_and_grows_with_each_round() -> None:
    assert epsilon([], 1e-5) == 0.0
    values = [epsilon([1.0] * rounds, 1e-5) for rounds in (1, 10, 100)]
    assert values[0] < values[1] < values[2]


def test_epsilon_is_within_the_textbook_rdp_bound_and_not_far_below() -> None:
    for multipliers in ([1.0], [2.0] * 50, [0.8, 1.2, 3.0]):
        got, bound = epsilon(multipliers, 1e-5), _rdp_bound(multipliers, 1e-5)
        assert 0.6 * bound < got <= bound * 1.0001


def test_more_noise_costs_less() -> None:
    assert epsilon([4.0] * 10, 1e-5) < epsilon([1.0] * 10, 1e-5)


def test_charged_rounds_are_read_back_from_run_log_lines_in_round_order() -> None:
    lines = [
        {"round": 2, "secagg": {"dp": {"noise_multiplier": 1.5}}},
        {"round": 1, "secagg": {"dp": {"noise_multiplier": 2.0}}},
        {"round": 3, "secagg": {"aborted": "too few", "dp": None}},  # aborted: no release
        {"round": 4},  # plaintext line
    ]
    assert charged_rounds(lines) == [2.0, 1.5]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 0.1), "dp-noise-multiplier must be > 0"),
        ((1.0, math.inf), "dp-clip-norm must be > 0"),
        ((1.0, 0.1, 0.0), "dp-delta must be in"),
    ],
)
def test_a_bad_plan_is_refused(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DpPlan(*args)
