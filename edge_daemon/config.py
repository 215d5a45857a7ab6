"""daemon.yaml, the edge daemon's one configuration file, loaded into a frozen `DaemonConfig`.

The dataclasses below are the schema: a field's type is the key's type, a field with a default
is optional. Unknown keys, a key given twice, wrong types and out-of-range values raise
`ConfigError` naming the file and the dotted key. Relative paths resolve against the directory
of daemon.yaml. `load_config(path, check_files=True)` (what `edge-daemon run` uses) also
requires `fleet_key`, `server.root_certificates` and `server.auth_key` to be readable files, so
a daemon with a wrong path fails at once (exit 3) instead of a node failing later.

    state_dir: /var/lib/edge-daemon   # required: readings, tickets, state, the node's FLWR_HOME
    fleet_key: fleet.pub              # required: PEM Ed25519 public key every ticket must be
                                      #   signed by
    server:
      address: fleet.example.org:9092 # required: the SuperLink's Fleet API, host:port
      root_certificates: ca.pem       # PEM CA bundle for TLS; required unless insecure
      auth_key: node.key              # the node's private key for SuperNode authentication
                                      #   (`edge-daemon keygen`); null: the SuperLink does not
                                      #   authenticate nodes
      insecure: false                 # true: plaintext gRPC (loopback demos only)
    data:
      schema: heart-uci               # what one reading is (edge_daemon.readings.SCHEMAS)
      retention_rows: null            # keep at most this many readings, newest (>= 1)
      retention_days: null            # drop readings ingested longer ago than this (> 0)
      max_csv_bytes: 67108864         # `ingest` refuses a larger CSV file whole (64 MiB)
      max_csv_rows: 1000000           # ... or one with more rows than this
    eligibility:                      # when the device may train (edge_daemon.eligibility)
      battery_min_percent: 50         # on battery, train only at or above this; null: only on
                                      #   external power
      battery_margin_percent: 5       # start only at min + margin, stop below min
      no_battery_means_mains: true    # no battery and no power source reported: mains-powered
      cpu_busy_max_percent: 30        # other processes' CPU share over cpu_window_s
      cpu_margin_percent: 5           # start only at or below max - margin
      cpu_window_s: 60
      min_free_memory_mb: 512
      memory_margin_mb: 128
      max_temperature_c: 70           # hottest sensor, where sensors exist; null: no limit
      temperature_margin_c: 5
      time_windows: []                # local times, e.g. ["22:00-06:00"]; empty: any time
      unmetered_only: true            # train only on links NetworkManager reports unmetered
      on_after_s: 120                 # eligible this long before the node starts
      off_after_s: 15                 # ineligible this long before the node stops
      probe_interval_s: 15            # how often the device is probed
    supervisor:                       # the flower-supernode subprocess
      grace_s: 10                     # SIGTERM, then SIGKILL after this long
      backoff_initial_s: 1            # delay before the first restart after an exit
      backoff_max_s: 300              # the restart delay doubles up to this
      jitter: 0.2                     # each delay is scaled by a random factor in [1-j, 1+j],
                                      #   then capped at backoff_max_s
    node_port: 9094                   # the SuperNode's local ClientApp port (one per daemon)
    probe_file: null                  # tests and demos only: read the device's conditions from
                                      #   this JSON file (edge_daemon.probe.FileProbe) instead
                                      #   of its sensors
    predict_socket: false             # true: `run` serves predictions on state_dir/predict.sock
                                      #   (HTTP, mode 0600, this device only;
                                      #   edge_daemon/predict_server.py)
    personalise:                      # fine-tune each new global model on this device's own
                                      #   labelled readings (edge_daemon/personalise.py); the
                                      #   personal model never leaves the device
      enabled: true                   # false: `run` never personalises; predict uses the global
      layers: last                    # "last": only the output layer trains; "all": every
                                      #   surviving weight (the ticket's mask is kept either way)
      epochs: 20
      lr: 0.001
      batch_size: 32
      min_train_rows: 20              # fewer labelled training rows: not personalised
      min_held_out_rows: 5            # fewer held-out rows (every 5th labelled reading): not
                                      #   personalised, there is nothing to judge it on
"""

import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge_daemon.eligibility import EligibilityPolicy, TimeWindow
from edge_daemon.readings import SCHEMAS, CsvLimits
from ticket.config_schema import (
    SchemaLoader,
    read_document,
    rejecting_duplicate_keys,
    show_value,
)


class ConfigError(Exception):
    """daemon.yaml is missing, unreadable, or does not fit the schema."""


@dataclass(frozen=True)
class ServerConfig:
    address: str
    root_certificates: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False


@dataclass(frozen=True)
class DataConfig:
    schema: str = field(default="heart-uci", metadata={"choices": tuple(SCHEMAS)})
    retention_rows: int | None = field(default=None, metadata={"ge": 1})
    retention_days: float | None = field(default=None, metadata={"gt": 0})
    max_csv_bytes: int = field(default=CsvLimits.max_bytes, metadata={"ge": 1})
    max_csv_rows: int = field(default=CsvLimits.max_rows, metadata={"ge": 1})

    @property
    def csv_limits(self) -> CsvLimits:
        return CsvLimits(max_bytes=self.max_csv_bytes, max_rows=self.max_csv_rows)


@dataclass(frozen=True)
class SupervisorConfig:
    grace_s: float = field(default=10.0, metadata={"ge": 0})
    backoff_initial_s: float = field(default=1.0, metadata={"gt": 0})
    backoff_max_s: float = field(default=300.0, metadata={"gt": 0})
    jitter: float = field(default=0.2, metadata={"ge": 0, "le": 1})


@dataclass(frozen=True)
class PersonaliseConfig:
    enabled: bool = True
    layers: str = field(default="last", metadata={"choices": ("last", "all")})
    epochs: int = field(default=20, metadata={"ge": 1, "le": 10_000})
    lr: float = field(default=0.001, metadata={"gt": 0, "le": 10})
    batch_size: int = field(default=32, metadata={"ge": 1, "le": 1_000_000})
    min_train_rows: int = field(default=20, metadata={"ge": 1})
    min_held_out_rows: int = field(default=5, metadata={"ge": 1})


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    fleet_key: Path
    server: ServerConfig
    data: DataConfig = field(default_factory=DataConfig)
    eligibility: EligibilityPolicy = field(default_factory=EligibilityPolicy)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    node_port: int = field(default=9094, metadata={"ge": 1, "le": 65535})
    probe_file: Path | None = None
    predict_socket: bool = False  # serve POST /predict on state_dir/predict.sock (0600)
    personalise: PersonaliseConfig = field(default_factory=PersonaliseConfig)


_YAML_LOADER = rejecting_duplicate_keys(yaml.SafeLoader)


def parse_yaml(text: str) -> object:
    """yaml.safe_load, except that a mapping with a key given twice is an error."""
    return yaml.load(text, Loader=_YAML_LOADER)  # a SafeLoader: no arbitrary objects


def load_config(path: Path | str, *, check_files: bool = False) -> DaemonConfig:
    """daemon.yaml as a DaemonConfig; with `check_files`, the key files it names are readable."""
    path = Path(path)
    data = read_document(path, parse=parse_yaml, parse_error=yaml.YAMLError, error_type=ConfigError)
    loader = SchemaLoader(str(path), path.absolute().parent, error_type=ConfigError, parsed=_PARSED)
    config: DaemonConfig = loader.build(DaemonConfig, {} if data is None else data, "")
    _check_server(config.server, loader)
    if config.supervisor.backoff_max_s < config.supervisor.backoff_initial_s:
        raise loader.error("supervisor.backoff_max_s", "must be >= supervisor.backoff_initial_s")
    if check_files:
        _check_files(config, loader)
    return config


def _check_files(config: DaemonConfig, loader: SchemaLoader) -> None:
    files = {
        "fleet_key": config.fleet_key,
        "server.root_certificates": config.server.root_certificates,
        "server.auth_key": config.server.auth_key,
    }
    for key, path in files.items():
        problem = None if path is None else _unreadable(path)
        if problem is not None:
            raise loader.error(key, f"{path}: {problem}")


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be read as a file; None when it can."""
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory, not a file"
    except PermissionError:
        return "not readable by this user (permission denied)"
    except OSError as error:
        return f"cannot read: {error.strerror}"
    return None


def _check_server(server: ServerConfig, loader: SchemaLoader) -> None:
    host, _, port = server.address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise loader.error(
            "server.address", f'expected "host:port", got {show_value(server.address)}'
        )
    if server.insecure and server.root_certificates is not None:
        raise loader.error("server.insecure", "true conflicts with server.root_certificates")
    if not server.insecure and server.root_certificates is None:
        raise loader.error("server.root_certificates", "required unless server.insecure is true")


# Types read from a YAML string by a parser that raises ValueError with the rule broken.
_PARSED: dict[type, typing.Callable[[str], object]] = {TimeWindow: TimeWindow.parse}
