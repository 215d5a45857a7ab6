"""The eligibility policy and its hysteresis, driven by hand-built snapshots from a fake probe."""

from dataclasses import replace
from datetime import UTC, datetime, time

import pytest

from edge_daemon.eligibility import (
    EligibilityPolicy,
    EligibilityTracker,
    TimeWindow,
    Verdict,
    evaluate,
)
from edge_daemon.probe import DeviceSnapshot, NetworkState, Probe

NOON = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

# A phone on its charger, idle, cool, on Wi-Fi: every check passes.
GOOD = DeviceSnapshot(
    time=NOON,
    on_power=True,
    battery_percent=80.0,
    cpu_busy_percent=5.0,
    free_memory_mb=2048.0,
    temperature_c=35.0,
    network=NetworkState("unmetered", "test"),
)
POLICY = EligibilityPolicy(on_after_s=60.0, off_after_s=10.0)


class FakeProbe:
    """Returns the snapshots it was given, one per call."""

    def __init__(self, *snapshots: DeviceSnapshot) -> None:
        self._snapshots = list(snapshots)

    def snapshot(self) -> DeviceSnapshot:
        return self._snapshots.pop(0)


def _failed(verdict: Verdict) -> dict[str, str]:
    return {check.condition: check.detail for check in verdict.checks if not check.is_ok}


def test_a_good_snapshot_is_eligible_and_every_check_is_explained() -> None:
    verdict = evaluate(GOOD, POLICY)

    assert verdict.is_eligible
    assert verdict.reasons == ()
    assert [check.condition for check in verdict.checks] == [
        "power",
        "cpu",
        "memory",
        "temperature",
        "time",
        "network",
    ]
    assert str(verdict.checks[0]) == "power: on external power"


# --- power and missing sensors ---------------------------------------------------------------


def test_on_battery_below_the_limit_fails_and_names_the_values() -> None:
    snapshot = replace(GOOD, on_power=False, battery_percent=40.0)

    verdict = evaluate(snapshot, POLICY)

    assert not verdict.is_eligible
    assert verdict.reasons == ("power: on battery 40% < 55%",)  # turn-on limit: 50 + margin 5


def test_on_battery_above_the_limit_passes() -> None:
    snapshot = replace(GOOD, on_power=False, battery_percent=90.0)
    assert evaluate(snapshot, POLICY).is_eligible


def test_null_battery_minimum_means_external_power_only() -> None:
    policy = replace(POLICY, battery_min_percent=None)
    snapshot = replace(GOOD, on_power=False, battery_percent=100.0)

    assert _failed(evaluate(snapshot, policy)) == {
        "power": "on battery 100%, external power required"
    }
    assert evaluate(GOOD, policy).is_eligible


def test_a_mains_box_with_no_battery_sensor_can_train() -> None:
    mains_box = replace(GOOD, on_power=None, battery_percent=None, temperature_c=None)

    verdict = evaluate(mains_box, POLICY)

    assert verdict.is_eligible
    details = {check.condition: check.detail for check in verdict.checks}
    assert details["power"] == "no battery present, so mains-powered"
    assert details["temperature"] == "no sensor present"


def test_no_battery_rule_can_be_switched_off() -> None:
    policy = replace(POLICY, no_battery_means_mains=False)
    mains_box = replace(GOOD, on_power=None, battery_percent=None)

    assert "power" in _failed(evaluate(mains_box, policy))


def test_on_battery_with_an_unreadable_level_is_not_guessed() -> None:
    snapshot = replace(GOOD, on_power=False, battery_percent=None)
    assert _failed(evaluate(snapshot, POLICY)) == {"power": "on battery, battery level not present"}


def test_unknown_power_source_with_a_battery_is_judged_on_the_battery() -> None:
    low = replace(GOOD, on_power=None, battery_percent=20.0)
    assert _failed(evaluate(low, POLICY)) == {
        "power": "power source not reported, battery 20% < 55%"
    }
    assert evaluate(replace(low, battery_percent=70.0), POLICY).is_eligible


# --- cpu, memory, temperature ------------------------------------------------------------------


def test_cpu_without_a_full_window_fails() -> None:
    snapshot = replace(GOOD, cpu_busy_percent=None)
    assert _failed(evaluate(snapshot, POLICY)) == {"cpu": "not measured yet over a 60 s window"}


def test_busy_cpu_low_memory_and_heat_each_fail_with_their_values() -> None:
    snapshot = replace(GOOD, cpu_busy_percent=80.0, free_memory_mb=100.0, temperature_c=75.5)

    assert _failed(evaluate(snapshot, POLICY)) == {
        "cpu": "other processes 80% busy > 25% over 60 s",
        "memory": "100 MB free < 640 MB",
        "temperature": "75.5 C > 65 C",
    }


def test_temperature_limit_can_be_switched_off() -> None:
    policy = replace(POLICY, max_temperature_c=None)
    assert evaluate(replace(GOOD, temperature_c=99.0), policy).is_eligible


# --- time windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "inside"),
    [(22, 0, True), (23, 59, True), (0, 0, True), (5, 59, True), (6, 0, False), (12, 0, False),
     (21, 59, False)],
)  # fmt: skip
def test_a_window_spanning_midnight(hour: int, minute: int, inside: bool) -> None:
    window = TimeWindow.parse("22:00-06:00")
    policy = replace(POLICY, time_windows=(window,))
    snapshot = replace(GOOD, time=datetime(2025, 6, 1, hour, minute, tzinfo=UTC))

    assert window.contains(time(hour, minute)) is inside
    assert evaluate(snapshot, policy).is_eligible is inside


def test_a_daytime_window_and_several_windows() -> None:
    policy = replace(
        POLICY, time_windows=(TimeWindow.parse("01:00-02:00"), TimeWindow.parse("12:00-12:30"))
    )
    assert evaluate(GOOD, policy).is_eligible  # noon falls in the second window

    late = replace(GOOD, time=datetime(2025, 6, 1, 13, 0, tzinfo=UTC))
    assert _failed(evaluate(late, policy)) == {"time": "13:00 outside 01:00-02:00, 12:00-12:30"}


@pytest.mark.parametrize(
    "text", ["22:00", "22-06", "22:00-06:00-07:00", "24:00-06:00", "22:00-22:00"]
)
def test_malformed_windows_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        TimeWindow.parse(text)


# --- network -----------------------------------------------------------------------------------


def test_metered_and_unknown_links_fail_when_only_unmetered_counts() -> None:
    metered = replace(GOOD, network=NetworkState("metered", "nmcli"))
    unknown = replace(GOOD, network=NetworkState("unknown", "nmcli not found"))

    assert _failed(evaluate(metered, POLICY)) == {
        "network": "metered (nmcli), unmetered_only requires unmetered"
    }
    assert "set unmetered_only: false" in _failed(evaluate(unknown, POLICY))["network"]


def test_metered_and_unknown_links_pass_when_the_policy_allows_them() -> None:
    policy = replace(POLICY, unmetered_only=False)
    for kind in ("metered", "unknown"):
        snapshot = replace(GOOD, network=NetworkState(kind, "test"))
        assert evaluate(snapshot, policy).is_eligible


def test_offline_always_fails() -> None:
    policy = replace(POLICY, unmetered_only=False)
    offline = replace(GOOD, network=NetworkState("offline", "NetworkManager State=20"))
    assert _failed(evaluate(offline, policy)) == {"network": "offline (NetworkManager State=20)"}


# --- margins -----------------------------------------------------------------------------------


def test_margins_make_turning_on_stricter_than_staying_on() -> None:
    edge = replace(GOOD, on_power=False, battery_percent=52.0, cpu_busy_percent=27.0)

    assert not evaluate(edge, POLICY, is_eligible=False).is_eligible  # needs >= 55%, <= 25%
    assert evaluate(edge, POLICY, is_eligible=True).is_eligible  # keeps going at >= 50%, <= 30%
    below = replace(edge, battery_percent=49.0)
    assert not evaluate(below, POLICY, is_eligible=True).is_eligible


# --- the tracker: delays and flapping ----------------------------------------------------------


def _drive(tracker: EligibilityTracker, probe: Probe, times: list[float]) -> list[bool]:
    return [tracker.update(probe.snapshot(), now_s).is_eligible for now_s in times]


def test_tracker_turns_on_only_after_on_after_s_of_eligible_verdicts() -> None:
    tracker = EligibilityTracker(POLICY)
    probe = FakeProbe(*[GOOD] * 4)

    states = _drive(tracker, probe, [0.0, 30.0, 59.0, 60.0])

    assert states == [False, False, False, True]


def test_tracker_reports_pending_time_and_the_switch() -> None:
    tracker = EligibilityTracker(POLICY)

    first = tracker.update(GOOD, 100.0)
    later = tracker.update(GOOD, 145.0)
    switch = tracker.update(GOOD, 160.0)

    assert (first.pending_s, later.pending_s) == (0.0, 45.0)
    assert not first.has_changed and not later.has_changed
    assert switch.has_changed and switch.is_eligible and switch.pending_s is None


def test_an_interruption_restarts_the_on_delay() -> None:
    busy = replace(GOOD, cpu_busy_percent=90.0)
    tracker = EligibilityTracker(POLICY)
    probe = FakeProbe(GOOD, GOOD, busy, GOOD, GOOD, GOOD)

    states = _drive(tracker, probe, [0.0, 50.0, 55.0, 60.0, 100.0, 120.0])

    assert states == [False, False, False, False, False, True]  # counted again from t=60


def test_tracker_turns_off_after_off_after_s_and_a_blip_does_not_stop_it() -> None:
    unplugged = replace(GOOD, on_power=False, battery_percent=20.0)
    tracker = EligibilityTracker(POLICY, is_eligible=True)
    probe = FakeProbe(unplugged, GOOD, unplugged, unplugged, unplugged)

    states = _drive(tracker, probe, [0.0, 5.0, 20.0, 25.0, 30.0])

    assert states == [True, True, True, True, False]  # the blip at t=0 was forgiven at t=5


def test_a_reading_hovering_at_the_limit_does_not_flap() -> None:
    policy = replace(POLICY, on_after_s=0.0, off_after_s=0.0)  # no delays: margins alone
    tracker = EligibilityTracker(policy)
    levels = [56.0, 51.0, 54.0, 50.5, 53.0, 52.0]  # wobbling around 50-55% on battery
    probe = FakeProbe(*(replace(GOOD, on_power=False, battery_percent=p) for p in levels))

    states = _drive(tracker, probe, [float(t) for t in range(len(levels))])

    assert states == [True] * len(levels)  # on at 56%, never below 50% afterwards
    assert not tracker.update(
        replace(GOOD, on_power=False, battery_percent=49.0), 9.0
    ).verdict.is_eligible
    assert tracker.is_eligible is False


def test_a_clock_that_steps_back_restarts_the_delay_instead_of_switching() -> None:
    tracker = EligibilityTracker(POLICY)
    tracker.update(GOOD, 1000.0)

    decision = tracker.update(GOOD, 10.0)  # a fake clock reset: must not count as 990 s early

    assert not decision.is_eligible
    assert decision.pending_s == 0.0
    assert tracker.update(GOOD, 70.0).is_eligible
