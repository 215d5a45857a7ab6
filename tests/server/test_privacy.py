"""The privacy accountant: Skellam releases in RDP, amplification by Poisson sampling (Zhu &
Wang's bound), composition, the budget check, and the run log's record of each release."""

import math

import dp_accounting
import pytest

from server.privacy import (
    ORDERS,
    DpPlan,
    Release,
    charged_rounds,
    epsilon,
    skellam_rdp,
    subsampled_rdp,
)

LENGTH = 10_000


def _gaussian_epsilon(z: float, rounds: int, rate: float) -> float:
    """dp-accounting's own (tight) RDP accounting of a Poisson-subsampled Gaussian."""
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(a) for a in ORDERS])
    event = dp_accounting.GaussianDpEvent(z)
    if rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(rate, event)
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(1e-5))


def _release(z: float, rate: float = 1.0, l2: float = 800.0) -> Release:
    return Release(variance=(z * l2) ** 2, l2=l2, l1=l2 * 100, rate=rate)


def test_skellam_costs_a_little_more_than_the_gaussian_and_converges_to_it() -> None:
    for order in (2, 8, 64):
        gaussian = order / (2 * 1.5**2)
        small = skellam_rdp(order, variance=(1.5 * 3) ** 2, l2=3.0, l1=9.0)
        large = skellam_rdp(order, variance=(1.5 * 3000) ** 2, l2=3000.0, l1=9e6)
        assert small > gaussian
        assert gaussian < large < gaussian * 1.001


def test_unsampled_releases_compose_to_the_gaussian_accounting() -> None:
    for z, rounds in ((1.0, 1), (2.0, 50)):
        got = epsilon([_release(z)] * rounds, 1e-5)
        assert got == pytest.approx(_gaussian_epsilon(z, rounds, 1.0), rel=0.01)
        assert got >= _gaussian_epsilon(z, rounds, 1.0)


@pytest.mark.parametrize(
    ("z", "rate", "rounds"), [(1.0, 0.01, 100), (2.0, 0.1, 50), (1.5, 0.5, 20)]
)
def test_zhu_wang_bounds_the_exact_subsampled_gaussian_from_above_and_not_far(
    z: float, rate: float, rounds: int
) -> None:
    """Zhu & Wang's bound holds for any mechanism; on the Gaussian, whose subsampled RDP
    dp-accounting computes exactly, it must not be below it and should not be far above."""
    gaussian = [order / (2 * z * z) for order in range(2, max(ORDERS) + 1)]
    exact_rdp = dp_accounting.rdp.rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(
        rate, z, [float(a) for a in ORDERS]
    )
    for order, exact in zip(ORDERS, exact_rdp, strict=True):
        bound = subsampled_rdp(order, rate, gaussian)
        assert bound >= exact * (1 - 1e-9)
    ours = epsilon([_release(z, rate, l2=1e6)] * rounds, 1e-5)
    exact_eps = _gaussian_epsilon(z, rounds, rate)
    assert exact_eps <= ours < 2.0 * exact_eps


def test_sampling_only_ever_lowers_epsilon() -> None:
    for z in (0.8, 2.0):
        unsampled = epsilon([_release(z)] * 30, 1e-5)
        assert epsilon([_release(z, 0.5)] * 30, 1e-5) <= unsampled
        assert epsilon([_release(z, 0.01)] * 30, 1e-5) < unsampled / 5


def test_epsilon_is_nothing_for_no_rounds_and_grows_with_each_round() -> None:
    assert epsilon([], 1e-5) == 0.0
    values = [epsilon([_release(1.0)] * rounds, 1e-5) for rounds in (1, 10, 100)]
    assert values[0] < values[1] < values[2]
    assert epsilon([_release(4.0)] * 10, 1e-5) < epsilon([_release(1.0)] * 10, 1e-5)


def test_the_plan_charges_a_round_at_its_survivors_noise() -> None:
    plan = DpPlan(noise_multiplier=1.0, clip_norm=0.5, sampling_rate=0.2)
    params = plan.skellam(LENGTH, min_survivors=10)
    at_minimum = plan.release(params, LENGTH, 10)
    assert at_minimum.noise_multiplier == pytest.approx(1.0)
    assert plan.release(params, LENGTH, 40).noise_multiplier == pytest.approx(2.0)
    assert at_minimum.rate == 0.2
    assert DpPlan(1.0, 0.5).release(params, LENGTH, 10).rate == 1.0  # no sampling claimed


def test_the_budget_refuses_a_run_that_would_spend_more() -> None:
    plan = DpPlan(noise_multiplier=1.0, clip_norm=0.5, epsilon_budget=10.0)
    planned = plan.release(plan.skellam(LENGTH, 10), LENGTH, 10)
    fits = plan.check_budget([], 3, planned)
    assert 0 < fits <= 10
    with pytest.raises(ValueError, match=r"dp-epsilon-budget: 0 rounds spent and 200 to go"):
        plan.check_budget([], 200, planned)
    with pytest.raises(ValueError, match=r"dp-epsilon-budget: 200 rounds spent and 1 to go"):
        plan.check_budget([planned] * 200, 1, planned)  # a resumed run's spending counts
    assert DpPlan(1.0, 0.5).check_budget([], 200, planned) > 10  # no budget: no refusal


def test_charged_rounds_are_read_back_from_run_log_lines_in_round_order() -> None:
    one, two = _release(2.0), _release(1.5, 0.1)
    lines = [
        {"round": 2, "secagg": {"dp": {"release": two.to_json()}}},
        {"round": 1, "secagg": {"dp": {"release": one.to_json()}}},
        {"round": 3, "secagg": {"aborted": "too few", "dp": None}},  # aborted: no release
        {"round": 4},  # plaintext line
    ]
    assert charged_rounds(lines) == [one, two]
    with pytest.raises(ValueError, match="needs variance, l2, l1 and rate"):
        charged_rounds([{"round": 1, "secagg": {"dp": {"release": {"variance": 1.0}}}}])
    with pytest.raises(ValueError, match="not a DP release"):
        Release.from_json({"variance": 1.0, "l2": 1.0, "l1": 1.0, "rate": 2.0})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 0.1), "dp-noise-multiplier must be > 0"),
        ((1.0, math.inf), "dp-clip-norm must be > 0"),
        ((1.0, 0.1, 0.0), "dp-delta must be in"),
        ((1.0, 0.1, 1e-5, 1.5), "dp-sampling-rate must be in"),
        ((1.0, 0.1, 1e-5, 0.0, -1.0), "dp-epsilon-budget must be >= 0"),
    ],
)
def test_a_bad_plan_is_refused(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DpPlan(*args)
