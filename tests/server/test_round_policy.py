"""Round management's pure policy: sample sizes, failure-weighted sampling, the round keys."""

from collections import Counter

import pytest

from server.round_policy import (
    FailureHistory,
    RoundPolicy,
    check_goal_fits_fleet,
    weighted_sample,
)
from server.run_settings import ServerSettings
from ticket import runconfig
from ticket.runconfig import RunConfigError

NODES = list(range(101, 111))


def test_over_selection_samples_ceil_goal_times_factor_capped_by_the_online_nodes() -> None:
    policy = RoundPolicy(goal=4, overselect=1.3)

    assert policy.sample_size(online=10, min_nodes=2) == 6  # ceil(5.2)
    assert policy.sample_size(online=5, min_nodes=2) == 5  # capped by who is online
    assert RoundPolicy(goal=4, overselect=1.5).sample_size(online=10, min_nodes=2) == 6
    assert RoundPolicy(goal=4, overselect=1.0).sample_size(online=10, min_nodes=2) == 4
    assert RoundPolicy(goal=1, overselect=1.0).sample_size(online=10, min_nodes=3) == 3
    assert RoundPolicy(goal=10, overselect=1.1).sample_size(online=20, min_nodes=1) == 11


def test_goal_zero_is_unmanaged() -> None:
    assert not RoundPolicy().managed and RoundPolicy(goal=1).managed
    with pytest.raises(ValueError, match="fraction-train"):
        RoundPolicy().sample_size(online=4, min_nodes=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"goal": -1}, "goal"),
        ({"overselect": 0.9}, "over-selection"),
        ({"deadline_s": 0}, "deadline"),
    ],
)
def test_a_bad_policy_is_refused(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoundPolicy(**changes)  # type: ignore[arg-type]


def test_the_round_keys_parse_with_their_defaults_and_ranges() -> None:
    run = runconfig.parse({"round-goal": 4, "round-overselect": 1.5, "round-deadline-s": 30})
    assert RoundPolicy.of(run.training) == RoundPolicy(goal=4, overselect=1.5, deadline_s=30.0)
    defaults = runconfig.parse({}).training
    assert (defaults.round_goal, defaults.round_overselect, defaults.round_deadline_s) == (
        0,
        1.3,
        120.0,
    )
    for key, bad in [("round-goal", -1), ("round-overselect", 0.5), ("round-deadline-s", 0)]:
        with pytest.raises(RunConfigError, match=f"run config: {key}: must be"):
            runconfig.parse({key: bad})


def test_a_deadline_past_the_timeout_names_both_keys() -> None:
    with pytest.raises(RunConfigError, match=r"round-deadline-s \(120\).*round-timeout-s \(30\)"):
        runconfig.parse({"round-goal": 3, "round-timeout-s": 30})
    # Without a goal there is no deadline: a short timeout stays valid as before.
    assert runconfig.parse({"round-timeout-s": 30}).training.round_deadline_s == 120.0


def test_server_settings_carry_the_policy() -> None:
    config = {"ticket-path": "/t.ticket", "run-dir": "/run", "round-goal": 2}
    assert ServerSettings.from_run_config(config).rounds.goal == 2


def test_a_goal_above_the_fleet_names_the_key_and_the_enrolled_count() -> None:
    assert check_goal_fits_fleet(4, enrolled=6) is None
    assert check_goal_fits_fleet(0, enrolled=0) is None
    message = check_goal_fits_fleet(7, enrolled=6)
    assert message is not None and "run.round_goal" in message and "6 node(s)" in message


def test_failure_history_decays_and_weights() -> None:
    history = FailureHistory()
    history.observe([101])
    assert history.weight(101) == 0.5 and history.weight(102) == 1.0
    history.observe([])
    assert history.weight(101) == pytest.approx(0.5**0.5)
    for _ in range(20):
        history.observe([101])
    assert history.weight(101) == pytest.approx(0.25, abs=1e-3)  # score -> 2


def test_failure_history_is_rebuilt_from_run_log_lines() -> None:
    lines = [
        {"round": 2, "failures": {"103": "no reply"}},
        {"round": 1, "failures": {"101": "error", "103": "no reply"}},
        {"round": 3},  # an older line without failures reads as none
    ]
    history = FailureHistory.from_lines(lines)
    live = FailureHistory()
    for failed in ([101, 103], [103], []):
        live.observe(failed)
    assert history == live


def test_weighted_sampling_is_deterministic_and_independent_of_list_order() -> None:
    history = FailureHistory({103: 2.0})
    first = weighted_sample(NODES, 5, history, seed=7, server_round=3, stage="train")
    again = weighted_sample(NODES[::-1], 5, history, seed=7, server_round=3, stage="train")

    assert first == again and len(first) == 5 and first == sorted(set(first))
    other = [
        weighted_sample(NODES, 5, history, seed=7, server_round=r, stage="train") for r in (4, 5)
    ]
    assert first not in other or other[0] != other[1]  # rounds draw differently
    assert weighted_sample(NODES, 20, history, seed=7, server_round=3, stage="train") == NODES


def test_failing_nodes_are_sampled_less() -> None:
    history = FailureHistory({101: 2.0, 102: 2.0})
    counts: Counter[int] = Counter()
    for r in range(1, 401):
        counts.update(weighted_sample(NODES, 5, history, seed=0, server_round=r, stage="train"))

    healthy = sum(counts[n] for n in NODES[2:]) / 8
    assert counts[101] < 0.6 * healthy and counts[102] < 0.6 * healthy
    assert counts[101] > 0  # sampled less, not never: a recovered node can come back
