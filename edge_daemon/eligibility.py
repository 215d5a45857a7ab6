"""Whether the device can spare a training round now, and why: a pure policy plus hysteresis.

Missing sensors follow explicit rules, never guesses:
- power: external power passes. On battery (or when the power source is not reported) the battery
  must hold `battery_min_percent`; `null` there means "external power only". A device that
  reports neither a power source nor a battery has no battery, so it runs on mains: it passes,
  unless `no_battery_means_mains` is false (for a device whose battery psutil cannot read).
- cpu: no full window of samples yet fails (the device has not yet shown it is idle).
- temperature: no sensor passes (nothing to protect that we can see); a reading must stay under
  `max_temperature_c` (`null` turns the check off).
- network: offline always fails; with `unmetered_only`, only a link NetworkManager reports as
  unmetered passes, so "unknown" fails and says how to opt out.

Hysteresis has two parts. Margins: turning on needs a clear pass (battery >= min + margin, CPU <=
max - margin, ...), staying on needs only the plain limit, so a reading hovering at a limit
cannot flip the verdict back and forth. Delays: `EligibilityTracker` switches on only after the
verdict has said "eligible" for `on_after_s` and off after it has said "not eligible" for
`off_after_s`, measured on a monotonic clock the caller passes in.

Field metadata `ge`/`gt`/`le` are the bounds `config.py` enforces when it loads daemon.yaml.
"""

from dataclasses import dataclass, field
from datetime import time

from edge_daemon.probe import DeviceSnapshot


@dataclass(frozen=True)
class TimeWindow:
    """Local wall-clock times [start, end); an end before the start spans midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> "TimeWindow":
        """ "22:00-06:00" -> TimeWindow; ValueError when it is not two distinct HH:MM times."""
        parts = text.split("-")
        try:
            if len(parts) != 2:
                raise ValueError
            start, end = (time.fromisoformat(_hh_mm(part.strip())) for part in parts)
        except ValueError:
            raise ValueError('expected "HH:MM-HH:MM", e.g. "22:00-06:00"') from None
        if start == end:
            raise ValueError("start equals end; leave time_windows empty to allow any time")
        return cls(start, end)

    def contains(self, moment: time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _hh_mm(text: str) -> str:
    if len(text) != 5 or text[2] != ":":  # time.fromisoformat would also take "22", "22:00:30"
        raise ValueError
    return text


@dataclass(frozen=True)
class EligibilityPolicy:
    battery_min_percent: float | None = field(default=50.0, metadata={"ge": 0, "le": 100})
    battery_margin_percent: float = field(default=5.0, metadata={"ge": 0, "le": 100})
    no_battery_means_mains: bool = True
    cpu_busy_max_percent: float = field(default=30.0, metadata={"ge": 0, "le": 100})
    cpu_margin_percent: float = field(default=5.0, metadata={"ge": 0, "le": 100})
    cpu_window_s: float = field(default=60.0, metadata={"gt": 0})
    min_free_memory_mb: float = field(default=512.0, metadata={"ge": 0})
    memory_margin_mb: float = field(default=128.0, metadata={"ge": 0})
    max_temperature_c: float | None = field(default=70.0, metadata={"ge": 0, "le": 150})
    temperature_margin_c: float = field(default=5.0, metadata={"ge": 0})
    time_windows: tuple[TimeWindow, ...] = ()  # empty: any time of day
    unmetered_only: bool = True
    on_after_s: float = field(default=120.0, metadata={"ge": 0})
    off_after_s: float = field(default=15.0, metadata={"ge": 0})
    probe_interval_s: float = field(default=15.0, metadata={"gt": 0})


@dataclass(frozen=True)
class Check:
    condition: str  # "power", "cpu", "memory", "temperature", "time", "network"
    is_ok: bool
    detail: str  # the observed value against the limit, e.g. "on battery 40% < 55%"

    def __str__(self) -> str:
        return f"{self.condition}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def is_eligible(self) -> bool:
        return all(check.is_ok for check in self.checks)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why not: one line per failed check (empty when eligible)."""
        return tuple(str(check) for check in self.checks if not check.is_ok)


def evaluate(
    snapshot: DeviceSnapshot, policy: EligibilityPolicy, *, is_eligible: bool = False
) -> Verdict:
    """Judge one snapshot. `is_eligible` is the current state: False applies the stricter
    turn-on limits (limit plus margin), True the plain limits that keep a running node going."""
    strict = not is_eligible
    return Verdict(
        (
            _power(snapshot, policy, strict),
            _cpu(snapshot, policy, strict),
            _memory(snapshot, policy, strict),
            _temperature(snapshot, policy, strict),
            _time(snapshot, policy),
            _network(snapshot, policy),
        )
    )


def _power(snapshot: DeviceSnapshot, policy: EligibilityPolicy, strict: bool) -> Check:
    if snapshot.on_power:
        return Check("power", True, "on external power")
    if snapshot.battery_percent is None:
        if snapshot.on_power is False:
            return Check("power", False, "on battery, battery level not present")
        if policy.no_battery_means_mains:
            return Check("power", True, "no battery present, so mains-powered")
        return Check(
            "power", False, "neither power source nor battery present (no_battery_means_mains)"
        )
    source = "on battery" if snapshot.on_power is False else "power source not reported, battery"
    level = _show(snapshot.battery_percent)
    if policy.battery_min_percent is None:
        return Check("power", False, f"{source} {level}%, external power required")
    limit = policy.battery_min_percent + (policy.battery_margin_percent if strict else 0.0)
    is_ok = snapshot.battery_percent >= limit
    return Check("power", is_ok, f"{source} {level}% {'>=' if is_ok else '<'} {_show(limit)}%")


def _cpu(snapshot: DeviceSnapshot, policy: EligibilityPolicy, strict: bool) -> Check:
    if snapshot.cpu_busy_percent is None:
        return Check("cpu", False, f"not measured yet over a {_show(policy.cpu_window_s)} s window")
    limit = policy.cpu_busy_max_percent - (policy.cpu_margin_percent if strict else 0.0)
    is_ok = snapshot.cpu_busy_percent <= limit
    busy = _show(snapshot.cpu_busy_percent)
    return Check(
        "cpu",
        is_ok,
        f"other processes {busy}% busy {'<=' if is_ok else '>'} {_show(limit)}% over "
        f"{_show(policy.cpu_window_s)} s",
    )


def _memory(snapshot: DeviceSnapshot, policy: EligibilityPolicy, strict: bool) -> Check:
    limit = policy.min_free_memory_mb + (policy.memory_margin_mb if strict else 0.0)
    is_ok = snapshot.free_memory_mb >= limit
    free = _show(snapshot.free_memory_mb)
    return Check("memory", is_ok, f"{free} MB free {'>=' if is_ok else '<'} {_show(limit)} MB")


def _temperature(snapshot: DeviceSnapshot, policy: EligibilityPolicy, strict: bool) -> Check:
    if policy.max_temperature_c is None:
        return Check("temperature", True, "no limit set")
    if snapshot.temperature_c is None:
        return Check("temperature", True, "no sensor present")
    limit = policy.max_temperature_c - (policy.temperature_margin_c if strict else 0.0)
    is_ok = snapshot.temperature_c <= limit
    reading = _show(snapshot.temperature_c)
    return Check("temperature", is_ok, f"{reading} C {'<=' if is_ok else '>'} {_show(limit)} C")


def _time(snapshot: DeviceSnapshot, policy: EligibilityPolicy) -> Check:
    if not policy.time_windows:
        return Check("time", True, "any time allowed")
    moment = snapshot.time.time()
    windows = ", ".join(str(window) for window in policy.time_windows)
    is_ok = any(window.contains(moment) for window in policy.time_windows)
    return Check("time", is_ok, f"{moment:%H:%M} {'inside' if is_ok else 'outside'} {windows}")


def _network(snapshot: DeviceSnapshot, policy: EligibilityPolicy) -> Check:
    kind, source = snapshot.network.kind, snapshot.network.source
    if kind == "offline":
        return Check("network", False, f"offline ({source})")
    if not policy.unmetered_only or kind == "unmetered":
        return Check("network", True, f"{kind} ({source})")
    hint = "; set unmetered_only: false to allow it" if kind == "unknown" else ""
    return Check("network", False, f"{kind} ({source}), unmetered_only requires unmetered{hint}")


def _show(value: float) -> str:
    return f"{round(value, 1):g}"


@dataclass(frozen=True)
class Decision:
    is_eligible: bool  # the tracker's state after this update: run the node or not
    has_changed: bool  # this update switched the state
    verdict: Verdict  # this snapshot alone, judged against the current state's limits
    pending_s: float | None  # how long the verdict has disagreed with the state; None: it agrees


class EligibilityTracker:
    """Turns a stream of snapshots into a state that switches only after a verdict has held."""

    def __init__(self, policy: EligibilityPolicy, *, is_eligible: bool = False) -> None:
        self._policy = policy
        self._is_eligible = is_eligible
        self._disagree_since_s: float | None = None

    @property
    def is_eligible(self) -> bool:
        return self._is_eligible

    def update(self, snapshot: DeviceSnapshot, now_s: float) -> Decision:
        """Judge `snapshot`, taken at `now_s` on a monotonic clock (wall time can jump)."""
        verdict = evaluate(snapshot, self._policy, is_eligible=self._is_eligible)
        if verdict.is_eligible == self._is_eligible:
            self._disagree_since_s = None
            return Decision(self._is_eligible, False, verdict, None)
        if self._disagree_since_s is None or now_s < self._disagree_since_s:
            self._disagree_since_s = now_s
        held_s = now_s - self._disagree_since_s
        policy = self._policy
        if held_s < (policy.off_after_s if self._is_eligible else policy.on_after_s):
            return Decision(self._is_eligible, False, verdict, held_s)
        self._is_eligible = verdict.is_eligible
        self._disagree_since_s = None
        return Decision(self._is_eligible, True, verdict, None)
