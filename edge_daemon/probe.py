"""What the device reports about itself right now: a `Probe` Protocol and its psutil implementation.

A `None` reading means this device has no such sensor (or, for the CPU, no full window of samples
yet); nothing is ever guessed to fill a gap. The policy in `eligibility.py` decides what a missing
reading means.
"""

import json
import math
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import psutil

NetworkKind = Literal["unmetered", "metered", "unknown", "offline"]
_MIB = 2**20


@dataclass(frozen=True)
class NetworkState:
    kind: NetworkKind
    source: str  # where the answer came from, or why there is none


@dataclass(frozen=True)
class DeviceSnapshot:
    time: datetime  # local wall-clock time (timezone-aware), for the policy's time windows
    on_power: bool | None  # external power connected; None: not reported
    battery_percent: float | None  # None: no battery present
    cpu_busy_percent: (
        float | None
    )  # over the window, without the node's own work; None: no window yet
    free_memory_mb: float  # available to new processes without swapping
    temperature_c: float | None  # the hottest sensor; None: no temperature sensor
    network: NetworkState


class Probe(Protocol):
    def snapshot(self) -> DeviceSnapshot: ...


class CommandError(Exception):
    """A helper command is missing, failed, or timed out; the message says which and why."""


CommandRunner = Callable[[Sequence[str]], str]  # argv -> stdout, or CommandError


def run_command(argv: Sequence[str], timeout_s: float = 3.0) -> str:
    # C locale: nmcli translates its "yes"/"no" otherwise.
    environment = {**os.environ, "LC_ALL": "C"}
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=environment,
            check=False,  # the exit status is turned into a CommandError below
        )
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv[0]} timed out after {timeout_s:g} s") from None
    except OSError as error:
        raise CommandError(f"{argv[0]}: {error.strerror}") from None
    if completed.returncode != 0:
        first_line = (completed.stderr.strip().splitlines() or ["no message"])[0]
        raise CommandError(f"{argv[0]} exited {completed.returncode}: {first_line}")
    return completed.stdout


# NetworkManager's D-Bus enums (NMState, NMMetered).
_NM_OFFLINE_STATES = {10, 20, 30, 40}  # asleep, disconnected, disconnecting, connecting
_NM_METERED: dict[int, NetworkKind] = {1: "metered", 2: "unmetered", 3: "metered", 4: "unmetered"}
_BUSCTL = (
    "busctl", "--system", "get-property", "org.freedesktop.NetworkManager",
    "/org/freedesktop/NetworkManager", "org.freedesktop.NetworkManager", "State", "Metered",
)  # fmt: skip
_NMCLI = ("nmcli", "-t", "-f", "GENERAL.TYPE,GENERAL.STATE,GENERAL.METERED", "device", "show")


def read_network(run: CommandRunner = run_command) -> NetworkState:
    """NetworkManager's view of the primary link: over D-Bus (busctl), else nmcli, else unknown."""
    reasons = []
    for read in (_read_busctl, _read_nmcli):
        try:
            return read(run)
        except CommandError as error:
            reasons.append(str(error))
    return NetworkState("unknown", "NetworkManager not available: " + "; ".join(reasons))


def _read_busctl(run: CommandRunner) -> NetworkState:
    output = run(_BUSCTL).split()  # "u 70\nu 4\n"
    if len(output) != 4 or not (output[1].isdigit() and output[3].isdigit()):
        raise CommandError("busctl: unexpected output")
    state, metered = int(output[1]), int(output[3])
    if state in _NM_OFFLINE_STATES:
        return NetworkState("offline", f"NetworkManager State={state}")
    kind = _NM_METERED.get(metered, "unknown")
    return NetworkState(kind, f"NetworkManager Metered={metered} (busctl)")


def _read_nmcli(run: CommandRunner) -> NetworkState:
    # Terse output: one "FIELD:value" line per field, devices one after another.
    devices: list[dict[str, str]] = []
    for line in run(_NMCLI).splitlines():
        field, _, value = line.partition(":")
        if field == "GENERAL.TYPE":
            devices.append({})
        if devices:
            devices[-1][field] = value
    connected = [
        device
        for device in devices
        if device.get("GENERAL.TYPE") != "loopback"
        and device.get("GENERAL.STATE", "").startswith("100")
    ]
    if not connected:
        return NetworkState("offline", "nmcli: no connected device")
    flags = {device.get("GENERAL.METERED", "").split(" ")[0] for device in connected}
    # Conservative across links: any metered link may carry the upload.
    if "yes" in flags:
        return NetworkState("metered", "nmcli: a connected device is metered")
    if flags == {"no"}:
        return NetworkState("unmetered", "nmcli: every connected device is unmetered")
    return NetworkState("unknown", "nmcli: metered state unknown")


@dataclass(frozen=True)
class CpuSample:
    at_s: float  # monotonic clock
    busy_s: float  # CPU-seconds busy since boot, all cores
    total_s: float  # CPU-seconds elapsed since boot, all cores
    own_s: float  # CPU-seconds used so far by the daemon's and the node's trees (running total)


class CpuWindow:
    """Busy share of all CPUs over the last `window_s` seconds, not counting our own work.

    The node's training (and the daemon's own processes) must not count as load, or the daemon
    would stop the very round that made the device busy.
    """

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._samples: deque[CpuSample] = deque()

    def add(self, sample: CpuSample) -> float | None:
        """Record `sample`; the busy percent over a full window, or None until one has passed."""
        self._samples.append(sample)
        start = sample.at_s - self._window_s
        while len(self._samples) > 1 and self._samples[1].at_s <= start:
            self._samples.popleft()  # keep exactly one sample at or before the window's start
        base = self._samples[0]
        total = sample.total_s - base.total_s
        if sample.at_s - base.at_s < self._window_s or total <= 0:
            return None
        busy = (sample.busy_s - base.busy_s) - (sample.own_s - base.own_s)
        return min(100.0, max(0.0, 100.0 * busy / total))


def _system_cpu_seconds() -> tuple[float, float]:
    times = psutil.cpu_times()._asdict()
    # Linux counts guest time inside user time already.
    total = sum(times.values()) - times.get("guest", 0.0) - times.get("guest_nice", 0.0)
    idle = times.get("idle", 0.0) + times.get("iowait", 0.0)
    return total - idle, total


def _tree_cpu_seconds(root_pid: int) -> dict[int, float]:
    """CPU-seconds so far of every live process in the tree under `root_pid`."""
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # exited between listing and reading
        # Live processes only: a child's last moments before it exits count as others' load,
        # which errs towards "busy", the safe side.
        seconds[process.pid] = times.user + times.system
    return seconds


def _local_now() -> datetime:
    return datetime.now().astimezone()


class PsutilProbe:
    """Reads battery, power, CPU, memory and temperature through psutil, the network through
    NetworkManager. `node_pid` returns the supervised node's pid (None while it is stopped)."""

    def __init__(
        self,
        cpu_window_s: float,
        *,
        node_pid: Callable[[], int | None] = lambda: None,
        own_pid: int | None = None,  # the tree not counted besides the node's; None: ours
        run: CommandRunner = run_command,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _local_now,
    ) -> None:
        self._cpu = CpuWindow(cpu_window_s)
        self._node_pid = node_pid
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._run = run
        self._monotonic = monotonic
        self._now = now
        self._own_total_s = 0.0
        self._own_last: dict[int, float] = {}

    def snapshot(self) -> DeviceSnapshot:
        on_power, battery = _battery()
        return DeviceSnapshot(
            time=self._now(),
            on_power=on_power,
            battery_percent=battery,
            cpu_busy_percent=self._cpu.add(self._cpu_sample()),
            free_memory_mb=psutil.virtual_memory().available / _MIB,
            temperature_c=_hottest_sensor(),
            network=read_network(self._run),
        )

    def _cpu_sample(self) -> CpuSample:
        busy_s, total_s = _system_cpu_seconds()
        # The daemon's own tree (itself, its prediction workers) and the node's: neither is the
        # owner's load. The node runs in a session of its own, so it is listed apart.
        current = _tree_cpu_seconds(self._own_pid)
        pid = self._node_pid()
        if pid is not None:
            current.update(_tree_cpu_seconds(pid))
        # A running total survives node restarts and children exiting (a new pid starts at 0).
        for process_pid, seconds in current.items():
            self._own_total_s += max(0.0, seconds - self._own_last.get(process_pid, 0.0))
        self._own_last = current
        return CpuSample(self._monotonic(), busy_s, total_s, self._own_total_s)


def _battery() -> tuple[bool | None, float | None]:
    read = getattr(psutil, "sensors_battery", None)  # absent on some platforms
    battery = read() if read is not None else None
    if battery is None:
        return None, None
    return battery.power_plugged, float(battery.percent)


def _hottest_sensor() -> float | None:
    read = getattr(psutil, "sensors_temperatures", None)  # absent on some platforms
    if read is None:
        return None
    readings = [
        entry.current
        for entries in read().values()
        for entry in entries
        if entry.current is not None and math.isfinite(entry.current)
    ]
    return max(readings) if readings else None


class FileProbe:
    """Conditions read from a JSON file instead of sensors: for tests and demos that need to
    make a device eligible or not on cue. Keys (all optional): on_power, battery_percent,
    cpu_busy_percent, free_memory_mb, temperature_c (null: no such sensor) and network (a
    NetworkKind). A missing or unreadable file reads as offline, so the device is not eligible.
    """

    def __init__(self, path: str | os.PathLike[str], *, now: Callable[[], datetime] = _local_now):
        self._path = path
        self._now = now

    def snapshot(self) -> DeviceSnapshot:
        try:
            with open(self._path, encoding="utf-8") as file:
                values = json.load(file)
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            network = values.get("network", "unmetered")
            if network not in ("unmetered", "metered", "unknown", "offline"):
                raise ValueError(f"network must be a network kind, got {network!r}")
            return DeviceSnapshot(
                time=self._now(),
                on_power=_optional(values, "on_power", bool, True),
                battery_percent=_optional(values, "battery_percent", float, None),
                cpu_busy_percent=_optional(values, "cpu_busy_percent", float, 0.0),
                free_memory_mb=_optional(values, "free_memory_mb", float, 4096.0) or 0.0,
                temperature_c=_optional(values, "temperature_c", float, None),
                network=NetworkState(network, f"probe file {self._path}"),
            )
        except (OSError, ValueError) as error:
            return DeviceSnapshot(
                time=self._now(),
                on_power=None,
                battery_percent=None,
                cpu_busy_percent=None,
                free_memory_mb=0.0,
                temperature_c=None,
                network=NetworkState("offline", f"probe file {self._path}: {error}"),
            )


def _optional(values: dict[str, object], key: str, kind: type, default: Any) -> Any:
    value = values.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind | int):
        raise ValueError(f"{key} must be {kind.__name__} or null, got {value!r}")
    return kind(value)
