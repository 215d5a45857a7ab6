"""What `edge-daemon status` reports, gathered from the state directory (or a probe, if need be).

Eligibility comes from the running daemon's last verdict, `<state_dir>/status.json`, which the
daemon rewrites whenever its verdict, the reasons for it or its node change (the numbers in a
reason, such as a CPU share, are refreshed at most once a minute). While a switch waits out the
hysteresis delay, a reason says so ("eligible for 45 s of on_after_s 120 s"). Without that
file (the daemon has never run), or with `--probe`, the device is probed now: the CPU is sampled
for `sample_s` (the daemon averages over `eligibility.cpu_window_s`), and the stricter turn-on
limits apply, as they would for a daemon whose node is stopped. A recorded node pid that is no
longer alive is reported as "not running" with a warning: the daemon was stopped without
cleaning up.

`edge-daemon status --json` prints `StatusReport.to_json()`, version 4 (version 1 lacked
`node_starts` and `node_last_exit`, version 2 `bytes_received` and `last_round`, version 3
`predict_model` and `personalisation`); later versions only add keys:

    {
      "format": "ticketfleet/edge-daemon-status",
      "version": 3,
      "eligible": false,                  # may the device train now
      "reasons": ["power: on battery 40% < 55%"],  # why not, one per failed check; [] if eligible
      "verdict_source": "daemon",         # "daemon": status.json; "probe": measured just now
      "verdict_at": "2025-06-01T12:00:00+00:00",   # when that verdict was reached (ISO 8601)
      "node_running": true,               # the flower-supernode process is alive
      "node_pid": 4242,                   # null when not running
      "node_starts": 3,                   # nodes the daemon started since it started itself
      "node_last_exit": -9,               # the last node's exit status (-N: killed by signal
                                          #   N); null: none has exited yet
      "rounds_joined": 3,
      "last_participation": "2025-06-01T11:58:10+00:00",  # null: never took part
      "last_metrics": {"loss": 0.41, "accuracy": 0.8},    # the last round's; null: not finite
      "bytes_sent": 48213,                # payload bytes uploaded, all rounds
      "bytes_received": 48213,            # payload bytes of the instructions trained on
      "last_round": {"run_id": 7, "round": 3, "ticket_id": "<64 hex digits>"},  # or null
      "cached_tickets": ["<64 hex digits>"],  # content ids, sorted
      "readings": 303,                    # rows in the local readings store
      "predict_model": "personal",        # what `predict` uses now: "personal", "global" or
                                          #   "untrained" (no global model received yet)
      "predict_model_why": "...",         # one line saying why
      "personalisation": {                # the last one (personal.json); null: none ran yet
        "base": {"ticket_id": "<64 hex>", "run_id": 7, "server_round": 3, "final": true,
                 "sha256": "<64 hex>"},   # the global model it was fine-tuned from
        "is_current": true,               # base is the stored global model (else an older one)
        "global_accuracy": 0.70,          # on the device's held-out rows; null: not scored
        "personal_accuracy": 0.85,        # null: not fine-tuned (too few rows)
        "global_loss": 0.61, "personal_loss": 0.40,
        "held_out_rows": 60, "train_rows": 240, "layers": "last", "epochs": 20,
        "used": true, "why": "...", "at": "2026-12-03T09:00:00+00:00"
      }
    }
"""

import json
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import psutil

from edge_daemon.config import DaemonConfig
from edge_daemon.eligibility import Verdict, evaluate
from edge_daemon.model_store import ModelStoreError, read_header
from edge_daemon.paths import DaemonPaths
from edge_daemon.personal_record import PersonalRecord, PersonalRecordError, load_record
from edge_daemon.probe import FileProbe, PsutilProbe
from edge_daemon.readings import ReadingsStore
from edge_daemon.state import load_state
from edge_daemon.ticket_cache import TicketCache

FORMAT = "ticketfleet/edge-daemon-status"
VERSION = 4


@dataclass(frozen=True)
class DaemonVerdict:
    """The running daemon's record in status.json (the keys `edge-daemon status` relies on)."""

    eligible: bool
    reasons: tuple[str, ...]
    node_running: bool
    node_pid: int | None
    updated_at: datetime
    node_starts: int = 0  # absent from a status.json of an older daemon
    node_last_exit: int | None = None


@dataclass(frozen=True)
class StatusReport:
    eligible: bool
    reasons: tuple[str, ...]
    verdict_source: str  # "daemon" or "probe"
    verdict_at: datetime
    node_running: bool
    node_pid: int | None
    node_starts: int
    node_last_exit: int | None
    rounds_joined: int
    last_participation: datetime | None
    last_metrics: Mapping[str, float | None]
    bytes_sent: int
    cached_tickets: tuple[str, ...]
    readings: int
    bytes_received: int = 0
    last_round: Mapping[str, int | str] | None = None
    predict_model: str = "untrained"  # "personal", "global" or "untrained"
    predict_model_why: str = "no global model received yet"
    personalisation: PersonalRecord | None = None  # personal.json's; None: none ran yet
    personal_is_current: bool = False  # its base is the stored global model
    warnings: tuple[str, ...] = ()  # for stderr; not part of the JSON

    def to_json(self) -> dict[str, Any]:
        last = self.last_participation
        return {
            "format": FORMAT,
            "version": VERSION,
            "eligible": self.eligible,
            "reasons": list(self.reasons),
            "verdict_source": self.verdict_source,
            "verdict_at": self.verdict_at.isoformat(timespec="seconds"),
            "node_running": self.node_running,
            "node_pid": self.node_pid,
            "node_starts": self.node_starts,
            "node_last_exit": self.node_last_exit,
            "rounds_joined": self.rounds_joined,
            "last_participation": None if last is None else last.isoformat(timespec="seconds"),
            "last_metrics": dict(self.last_metrics),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "last_round": None if self.last_round is None else dict(self.last_round),
            "cached_tickets": list(self.cached_tickets),
            "readings": self.readings,
            "predict_model": self.predict_model,
            "predict_model_why": self.predict_model_why,
            "personalisation": self._personalisation_json(),
        }

    def _personalisation_json(self) -> dict[str, Any] | None:
        record = self.personalisation
        if record is None:
            return None
        document = record.to_json()
        kept = ["base", "global_accuracy", "personal_accuracy", "global_loss", "personal_loss"]
        kept += ["held_out_rows", "train_rows", "layers", "epochs", "used", "why", "at"]
        return {"is_current": self.personal_is_current} | {key: document[key] for key in kept}


def read_daemon_verdict(data: object) -> DaemonVerdict:
    """Parse status.json's content; ValueError names the first key that does not fit."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    reasons, pid, at = data.get("reasons"), data.get("node_pid"), data.get("updated_at")
    for key in ("eligible", "node_running"):
        if not isinstance(data.get(key), bool):
            raise ValueError(f"{key}: expected true or false")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise ValueError("reasons: expected a list of strings")
    if pid is not None and (type(pid) is not int or pid <= 0):
        raise ValueError("node_pid: expected a process id or null")
    starts, last_exit = data.get("node_starts", 0), data.get("node_last_exit")
    if type(starts) is not int or starts < 0:
        raise ValueError("node_starts: expected a whole number >= 0")
    if last_exit is not None and type(last_exit) is not int:
        raise ValueError("node_last_exit: expected an exit status or null")
    try:
        moment = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError("updated_at: expected an ISO 8601 time with a timezone")
    return DaemonVerdict(
        data["eligible"], tuple(reasons), data["node_running"], pid, moment, starts, last_exit
    )


def collect_status(
    config: DaemonConfig, *, probe_now: bool = False, sample_s: float = 1.0
) -> StatusReport:
    """Read everything the report shows; StateError/StoreError when those files are damaged."""
    paths = DaemonPaths(config.state_dir)
    warnings: list[str] = []
    recorded = None if probe_now else _recorded_verdict(paths, warnings)
    if recorded is None:
        probed = probe_verdict(config, sample_s)
        source = "probe"
        current = DaemonVerdict(probed.is_eligible, probed.reasons, False, None, datetime.now(UTC))
    else:
        source, current = "daemon", _without_dead_node(recorded, paths, warnings)
    state = load_state(paths.state_file)
    model, why, record, is_current = predict_choice(config, paths, warnings)
    return StatusReport(
        eligible=current.eligible,
        reasons=current.reasons,
        verdict_source=source,
        verdict_at=current.updated_at,
        node_running=current.node_running,
        node_pid=current.node_pid,
        node_starts=current.node_starts,
        node_last_exit=current.node_last_exit,
        rounds_joined=state.rounds_joined,
        last_participation=state.last_participation,
        last_metrics=state.last_metrics,
        bytes_sent=state.bytes_sent,
        bytes_received=state.bytes_received,
        last_round=state.last_round,
        cached_tickets=TicketCache(paths.tickets_dir, config.fleet_key).ids(),
        readings=_count_readings(config, paths),
        predict_model=model,
        predict_model_why=why,
        personalisation=record,
        personal_is_current=is_current,
        warnings=tuple(warnings),
    )


def predict_choice(
    config: DaemonConfig, paths: DaemonPaths, warnings: list[str]
) -> tuple[str, str, PersonalRecord | None, bool]:
    """(model predict uses, why, personal.json's record, whether its base is the stored global
    model), from the files' headers alone: what edge_daemon/predict.py decides, less checking
    the personal model's values (a damaged file is reported when predict reads it)."""
    try:
        header = read_header(paths.model_file)
    except FileNotFoundError:
        header = None
    except (OSError, ModelStoreError) as error:
        warnings.append(str(error))
        header = None
    try:
        record = load_record(paths.personal_record_file)
    except PersonalRecordError as error:
        warnings.append(str(error))
        record = None
    is_current = record is not None and record.base.is_base_of(header)
    if header is None:
        return "untrained", "no global model received yet", record, is_current
    if not config.personalise.enabled:
        why = "personalisation is off (daemon.yaml personalise.enabled: false)"
        return "global", why, record, is_current
    if record is None:
        return "global", "not personalised yet", record, is_current
    if not is_current:
        why = "the latest global model is not personalised yet (the daemon does so when idle)"
        return "global", why, record, is_current
    if record.used and _personal_sha(paths, warnings) != record.personal_sha256:
        why = f"{paths.personal_model_file}: missing or not the model personal.json names"
        return "global", why, record, is_current
    return ("personal" if record.used else "global"), record.why, record, is_current


def _personal_sha(paths: DaemonPaths, warnings: list[str]) -> str | None:
    try:
        return read_header(paths.personal_model_file).sha256
    except FileNotFoundError:
        return None
    except (OSError, ModelStoreError) as error:
        warnings.append(str(error))
        return None


def _recorded_verdict(paths: DaemonPaths, warnings: list[str]) -> DaemonVerdict | None:
    try:
        text = paths.status_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        warnings.append(f"{paths.status_file}: cannot read ({error}); probed the device instead")
        return None
    try:
        return read_daemon_verdict(json.loads(text))
    except ValueError as error:
        warnings.append(f"{paths.status_file}: {error}; probed the device instead")
        return None


def _without_dead_node(
    verdict: DaemonVerdict, paths: DaemonPaths, warnings: list[str]
) -> DaemonVerdict:
    # A daemon killed with -9 (or a crash) leaves its last record saying the node runs.
    pid = verdict.node_pid
    if not verdict.node_running or pid is None or psutil.pid_exists(pid):
        return verdict
    warnings.append(
        f"{paths.status_file}: records node pid {pid}, which is not running; is the daemon running?"
    )
    return replace(verdict, node_running=False, node_pid=None)


def probe_verdict(config: DaemonConfig, sample_s: float) -> Verdict:
    """Probe the device now and judge it by the turn-on limits of the config's policy."""
    if config.probe_file is not None:  # the daemon reads its conditions from a file too
        snapshot = FileProbe(config.probe_file).snapshot()
    else:
        probe = PsutilProbe(sample_s)
        probe.snapshot()  # the CPU's busy share needs two samples, `sample_s` apart
        time.sleep(sample_s)
        snapshot = probe.snapshot()
    return evaluate(snapshot, config.eligibility, is_eligible=False)


def _count_readings(config: DaemonConfig, paths: DaemonPaths) -> int:
    if not paths.readings_db.exists():  # opening the store would create it: status writes nothing
        return 0
    with ReadingsStore(paths.readings_db, schema=config.data.schema) as store:
        return store.count()


def _node_history(report: StatusReport) -> str:
    if report.verdict_source != "daemon":
        return ""  # probed now: no daemon, so no history to tell
    starts = f"{report.node_starts} start{'' if report.node_starts == 1 else 's'}"
    code = report.node_last_exit
    if code is None:
        return f", {starts}, none exited yet"
    return f", {starts}, last exit {_exit_text(code)}"


def _exit_text(code: int) -> str:
    """ "status 1", or "killed by SIGKILL" for subprocess's -9."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def format_status(report: StatusReport) -> str:
    """The report as aligned lines for a person."""
    if report.verdict_source == "daemon":
        source = f"the daemon's verdict at {report.verdict_at:%Y-%m-%d %H:%M:%S %Z}"
    else:
        source = "probed now"
    lines = [f"eligible        {'yes' if report.eligible else 'no'} ({source})"]
    lines += [f"                - {reason}" for reason in report.reasons]
    node = f"running (pid {report.node_pid})" if report.node_running else "not running"
    lines.append(f"node            {node}{_node_history(report)}")
    last = report.last_participation
    lines.append(
        f"rounds joined   {report.rounds_joined}"
        + (f", last at {last:%Y-%m-%d %H:%M:%S %Z}" if last is not None else "")
    )
    if report.last_metrics:
        metrics = ", ".join(
            f"{name} {'not finite' if value is None else f'{value:.4g}'}"
            for name, value in sorted(report.last_metrics.items())
        )
        lines.append(f"last metrics    {metrics}")
    if report.last_round is not None:
        last_round = report.last_round
        lines.append(
            f"last round      {last_round['round']} of run {last_round['run_id']}, "
            f"ticket {str(last_round['ticket_id'])[:12]}"
        )
    lines.append(f"bytes sent      {report.bytes_sent}")
    lines.append(f"bytes received  {report.bytes_received}")
    tickets = ", ".join(ticket_id[:12] for ticket_id in report.cached_tickets) or "none"
    lines.append(f"cached tickets  {tickets}")
    lines.append(f"readings        {report.readings}")
    lines.append(f"predict model   {report.predict_model}: {report.predict_model_why}")
    record = report.personalisation
    if record is not None:
        age = "" if report.personal_is_current else ", not the latest"
        lines.append(
            f"personalised    {record.at:%Y-%m-%d %H:%M:%S %Z} from {record.base.describe()}"
            f"{age}: accuracy "
            f"on {record.held_out_rows} held-out rows global {_accuracy(record.global_accuracy)}"
            f", personal {_accuracy(record.personal_accuracy)} ({record.train_rows} rows "
            f"trained on, layers {record.layers})"
        )
    return "\n".join(lines)


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
