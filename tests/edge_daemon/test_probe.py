"""The psutil probe: NetworkManager parsing, the CPU window, missing sensors reported as None."""

import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace

import psutil
import pytest

from edge_daemon import probe
from edge_daemon.probe import (
    CommandError,
    CpuSample,
    CpuWindow,
    NetworkState,
    PsutilProbe,
    read_network,
    run_command,
)
from ticket import process_guard


class FakeCommands:
    """Answers each command by its program name; a missing answer is a missing program."""

    def __init__(self, **answers: str | CommandError) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(argv[0])
        answer = self.answers.get(argv[0], CommandError(f"{argv[0]} not found"))
        if isinstance(answer, CommandError):
            raise answer
        return answer


# --- network -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metered", "kind"),
    [(1, "metered"), (2, "unmetered"), (3, "metered"), (4, "unmetered"), (0, "unknown")],
)
def test_busctl_metered_flag(metered: int, kind: str) -> None:
    run = FakeCommands(busctl=f"u 70\nu {metered}\n")

    state = read_network(run)

    assert state == NetworkState(kind, f"NetworkManager Metered={metered} (busctl)")  # type: ignore[arg-type]
    assert run.calls == ["busctl"]


def test_busctl_disconnected_state_is_offline() -> None:
    assert read_network(FakeCommands(busctl="u 20\nu 2\n")).kind == "offline"


NMCLI_WIFI_AND_LOOPBACK = """\
GENERAL.TYPE:loopback
GENERAL.STATE:100 (connected (externally))
GENERAL.METERED:unknown
GENERAL.TYPE:wifi
GENERAL.STATE:100 (connected)
GENERAL.METERED:no (guessed)
GENERAL.TYPE:gsm
GENERAL.STATE:30 (disconnected)
GENERAL.METERED:yes
"""


def test_nmcli_is_the_fallback_and_ignores_loopback_and_disconnected_devices() -> None:
    run = FakeCommands(nmcli=NMCLI_WIFI_AND_LOOPBACK)

    state = read_network(run)

    assert state.kind == "unmetered"
    assert run.calls == ["busctl", "nmcli"]


def test_nmcli_any_connected_metered_link_counts_as_metered() -> None:
    text = NMCLI_WIFI_AND_LOOPBACK.replace("30 (disconnected)", "100 (connected)")
    assert read_network(FakeCommands(nmcli=text)).kind == "metered"


def test_nmcli_with_no_connected_device_is_offline() -> None:
    text = "GENERAL.TYPE:wifi\nGENERAL.STATE:30 (disconnected)\nGENERAL.METERED:no\n"
    assert read_network(FakeCommands(nmcli=text)).kind == "offline"


def test_without_networkmanager_the_network_is_unknown_with_the_reasons() -> None:
    run = FakeCommands(busctl=CommandError("busctl exited 1: Failed to connect to bus"))

    state = read_network(run)

    assert state.kind == "unknown"
    assert "Failed to connect to bus" in state.source
    assert "nmcli not found" in state.source


def test_garbled_busctl_output_falls_back() -> None:
    state = read_network(FakeCommands(busctl="what?", nmcli=NMCLI_WIFI_AND_LOOPBACK))
    assert state.kind == "unmetered"


def test_run_command_turns_failures_into_command_errors() -> None:
    assert run_command([sys.executable, "-c", "print('hi')"]) == "hi\n"
    with pytest.raises(CommandError, match="not found"):
        run_command(["/nonexistent/program"])
    with pytest.raises(CommandError, match="exited 3: boom"):
        run_command([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    with pytest.raises(CommandError, match="timed out"):
        run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout_s=0.2)


# --- cpu window --------------------------------------------------------------------------------


def test_cpu_window_needs_a_full_window_then_reports_the_busy_share() -> None:
    window = CpuWindow(window_s=10.0)

    assert window.add(CpuSample(0.0, busy_s=0.0, total_s=0.0, own_s=0.0)) is None
    assert window.add(CpuSample(5.0, busy_s=5.0, total_s=20.0, own_s=0.0)) is None
    # 10 s on 4 cores = 40 CPU-seconds, 10 of them busy.
    assert window.add(CpuSample(10.0, busy_s=10.0, total_s=40.0, own_s=0.0)) == 25.0


def test_cpu_window_slides_and_forgets_old_load() -> None:
    window = CpuWindow(window_s=10.0)
    window.add(CpuSample(0.0, 0.0, 0.0, 0.0))
    window.add(CpuSample(10.0, 40.0, 40.0, 0.0))  # fully busy for the first 10 s

    # Idle from t=10 to t=20: the window [10, 20] sees none of the earlier load.
    assert window.add(CpuSample(20.0, 40.0, 80.0, 0.0)) == 0.0


def test_cpu_window_does_not_count_the_nodes_own_work() -> None:
    window = CpuWindow(window_s=10.0)
    window.add(CpuSample(0.0, 0.0, 0.0, own_s=0.0))

    # 30 of 40 CPU-seconds busy, 25 of them our own training: others used 5.
    assert window.add(CpuSample(10.0, busy_s=30.0, total_s=40.0, own_s=25.0)) == 12.5


# --- PsutilProbe -------------------------------------------------------------------------------


def _fake_sensors(
    monkeypatch: pytest.MonkeyPatch, battery: object, temperatures: dict[str, list[object]]
) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery, raising=False)
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: temperatures, raising=False)


def _probe(window_s: float = 60.0) -> PsutilProbe:
    return PsutilProbe(
        window_s,
        run=FakeCommands(busctl="u 70\nu 2\n"),
        now=lambda: datetime(2025, 6, 1, 23, 0, tzinfo=UTC),
    )


def test_a_device_without_battery_or_temperature_sensors_reports_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_sensors(monkeypatch, battery=None, temperatures={})

    snapshot = _probe().snapshot()

    assert snapshot.on_power is None
    assert snapshot.battery_percent is None
    assert snapshot.temperature_c is None
    assert snapshot.cpu_busy_percent is None  # first sample: no window yet
    assert snapshot.free_memory_mb > 0
    assert snapshot.network == NetworkState("unmetered", "NetworkManager Metered=2 (busctl)")
    assert snapshot.time == datetime(2025, 6, 1, 23, 0, tzinfo=UTC)


def test_platforms_without_sensor_functions_report_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(psutil, "sensors_battery", raising=False)
    monkeypatch.delattr(psutil, "sensors_temperatures", raising=False)

    snapshot = _probe().snapshot()

    assert (snapshot.on_power, snapshot.battery_percent, snapshot.temperature_c) == (
        None,
        None,
        None,
    )


def test_battery_and_the_hottest_finite_temperature_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    battery = SimpleNamespace(percent=63, secsleft=1000, power_plugged=False)
    temperatures = {
        "coretemp": [SimpleNamespace(current=48.0), SimpleNamespace(current=61.5)],
        "acpitz": [SimpleNamespace(current=float("nan")), SimpleNamespace(current=None)],
    }
    _fake_sensors(monkeypatch, battery, temperatures)  # type: ignore[arg-type]

    snapshot = _probe().snapshot()

    assert snapshot.on_power is False
    assert snapshot.battery_percent == 63.0
    assert snapshot.temperature_c == 61.5


def test_cpu_busy_share_appears_after_one_window_on_this_machine() -> None:
    probe_ = _probe(window_s=0.2)
    assert probe_.snapshot().cpu_busy_percent is None
    time.sleep(0.3)
    busy = probe_.snapshot().cpu_busy_percent
    assert busy is not None and 0.0 <= busy <= 100.0


def _busy_seen(
    probes: Callable[[int, int], tuple[PsutilProbe, PsutilProbe]],
) -> tuple[float, float, float]:
    """(CPU busy seen by the first probe, by the second, the share the burner burned) over one
    second in which a child of this process burns a core. `probes(burner, idle)` makes them;
    `idle` is a sleeping process whose tree can stand for a daemon that is not this one.
    Watched: a killed pytest must not leave the burner burning a core."""
    burner = process_guard.spawn([sys.executable, "-c", "while True: pass"])
    idle = process_guard.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first, second = probes(burner.pid, idle.pid)
        first.snapshot(), second.snapshot()
        before_s = probe._tree_cpu_seconds(burner.pid)[burner.pid]
        time.sleep(1.0)
        after_s = probe._tree_cpu_seconds(burner.pid)[burner.pid]
        one, two = first.snapshot(), second.snapshot()
    finally:
        for child in (burner, idle):
            child.kill()
            child.wait()
    assert one.cpu_busy_percent is not None and two.cpu_busy_percent is not None
    burned_share = 100.0 * (after_s - before_s) / (1.0 * (os.cpu_count() or 1))
    assert burned_share > 10.0  # the burner really ran
    return one.cpu_busy_percent, two.cpu_busy_percent, burned_share


def test_the_nodes_process_tree_is_subtracted() -> None:
    # The burner as "the node": its work is not load. This test process is the burner's
    # parent, so both probes stand for a daemon whose own tree is the idle process.
    excluded, total, burned = _busy_seen(
        lambda burner, idle: (
            PsutilProbe(0.5, node_pid=lambda: burner, own_pid=idle, run=FakeCommands()),
            PsutilProbe(0.5, own_pid=idle, run=FakeCommands()),
        )
    )
    # Both probes saw the same window; only one of them counted the burner as load.
    assert total - excluded > 0.5 * burned


def test_the_daemons_own_tree_is_not_load_either() -> None:
    # The burner as a child of "the daemon" (this process), no node running: not counted.
    excluded, counted, burned = _busy_seen(
        lambda burner, idle: (
            PsutilProbe(0.5, run=FakeCommands()),
            PsutilProbe(0.5, own_pid=idle, run=FakeCommands()),
        )
    )
    assert counted - excluded > 0.5 * burned
