"""Simulated devices for demos, end-to-end tests and benchmarks: one `edge-daemon` per hospital.

Each device gets a directory with its own daemon.yaml and state, its hospital's rows of the
vendored UCI table ingested with `edge-daemon ingest` (as a device owner would feed readings),
and the fleet's signed ticket installed with `edge-daemon tickets add`. Its conditions (power,
battery, network, ...) come from a JSON probe file the caller can rewrite at any time, so a test
can make a device ineligible mid-round. Only the `edge-daemon` command is used, never its
modules: loopback/ does not import edge_daemon.
"""

import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticket.atomic import atomic_write_text
from ticket.data.heart import HEART_SITES, is_test_row, read_heart_rows

ELIGIBLE = {"on_power": True, "cpu_busy_percent": 1.0, "network": "unmetered"}
UNPLUGGED = {"on_power": False, "battery_percent": 12.0, "network": "unmetered"}


class DeviceSetupError(RuntimeError):
    """`edge-daemon ingest` or `tickets add` failed for a device."""


@dataclass(frozen=True)
class Device:
    name: str
    directory: Path
    config: Path  # daemon.yaml
    probe_file: Path  # the conditions this device reports

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def public_key(self) -> Path:
        """The node's public key (`edge-daemon keygen`), for the operator to register."""
        return self.directory / "node.key.pub"

    def set_conditions(self, conditions: dict[str, Any]) -> None:
        atomic_write_text(self.probe_file, json.dumps(conditions))

    def status(self) -> dict[str, Any]:
        """What `edge-daemon status --json` says about this device."""
        result = _edge_daemon("status", "-c", str(self.config), "--json")
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def predict(self, readings: Path) -> dict[str, Any]:
        """What `edge-daemon predict FILE --json` says for these readings, on this device."""
        result = _edge_daemon("predict", "-c", str(self.config), str(readings), "--json")
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def personalise(self) -> dict[str, Any]:
        """`edge-daemon personalise --json`: the record of fine-tuning the latest model now."""
        result = _edge_daemon("personalise", "-c", str(self.config), "--json")
        document: dict[str, Any] = json.loads(result.stdout)
        return document


def hospital_csv(
    hospital: str,
    out: Path,
    *,
    training_only: bool = True,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Path:
    """One hospital's readings as a CSV export: its training rows (its test rows stay unseen,
    as the server's held-out evaluation uses them), at most `limit` of them; `shard` (i, n):
    every n-th of them from the i-th, for one of n devices sharing the hospital's patients."""
    index, count = shard
    rows = [
        row
        for row in read_heart_rows()
        if row["dataset"] == hospital and not (training_only and is_test_row(hospital, row["id"]))
    ][index::count][:limit]
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.getvalue())
    return out


def daemon_yaml(
    device_dir: Path,
    *,
    superlink: str,
    fleet_key: Path,
    node_port: int,
    probe_file: Path | None,
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
) -> str:
    """A daemon.yaml for a device on loopback, quick to react: TLS when `root_certificates` is
    given (else plaintext), node authentication with `auth_key`. Without a probe file the
    daemon reads the real sensors under the default eligibility policy."""
    server = (
        [f"  root_certificates: {json.dumps(str(root_certificates))}"]
        if root_certificates is not None
        else ["  insecure: true"]
    )
    if auth_key is not None:
        server.append(f"  auth_key: {json.dumps(str(auth_key))}")
    quick = [
        "eligibility:",
        "  on_after_s: 0",
        "  off_after_s: 0",
        "  probe_interval_s: 0.5",
    ]
    return "\n".join(
        [
            f"state_dir: {json.dumps(str(device_dir / 'state'))}",
            f"fleet_key: {json.dumps(str(fleet_key))}",
            "server:",
            f"  address: {json.dumps(superlink)}",
            *server,
            *(quick if probe_file is not None else []),
            "supervisor:",
            "  grace_s: 5",
            "  backoff_initial_s: 1",
            "  backoff_max_s: 10",
            f"node_port: {node_port}",
            f"probe_file: {json.dumps(str(probe_file)) if probe_file else 'null'}",
            "",
        ]
    )


def prepare_devices(
    root: Path,
    *,
    hospitals: tuple[str, ...] = HEART_SITES,
    ticket: Path | None,
    fleet_key: Path,
    superlink: str,
    ports: list[int],
    root_certificates: Path | None = None,
    node_auth: bool = False,
    shards: int = 1,
) -> list[Device]:
    """One device directory per hospital: config, readings ingested, ticket installed; with
    `node_auth`, a node key made by `edge-daemon keygen` (Device.public_key, to register).
    With `shards` > 1, that many devices per hospital, each with its share of the patients
    (named "Cleveland-1", ...); `ports` then has one port per device."""
    devices = []
    places = [(hospital, part) for hospital in hospitals for part in range(shards)]
    for (hospital, part), port in zip(places, ports, strict=True):
        name = hospital if shards == 1 else f"{hospital}-{part + 1}"
        directory = root / name.lower().replace(" ", "-")
        directory.mkdir(parents=True, exist_ok=True)
        device = Device(name, directory, directory / "daemon.yaml", directory / "probe.json")
        device.set_conditions(ELIGIBLE)
        auth_key = directory / "node.key" if node_auth else None
        if auth_key is not None and not auth_key.exists():
            _edge_daemon("keygen", "--out", str(auth_key), "--comment", device.name)
        device.config.write_text(
            daemon_yaml(
                directory,
                superlink=superlink,
                fleet_key=fleet_key.resolve(),
                node_port=port,
                probe_file=device.probe_file,
                root_certificates=root_certificates,
                auth_key=auth_key,
            )
        )
        readings = hospital_csv(hospital, directory / "readings.csv", shard=(part, shards))
        _edge_daemon("ingest", "-c", str(device.config), str(readings))
        if ticket is not None:  # else it arrives with `ticket deploy`
            _edge_daemon("tickets", "add", "-c", str(device.config), str(ticket))
        devices.append(device)
    return devices


def _edge_daemon(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "edge-daemon"), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DeviceSetupError(f"edge-daemon {' '.join(args[:2])}: {result.stderr.strip()}")
    return result
