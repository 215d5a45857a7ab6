"""server.yaml, fleet-server's one configuration file, loaded into a frozen `FleetConfig`.

The dataclasses below are the schema (ticket/config_schema.py walks them): a field's type is the
key's type, a field with a default is optional. Unknown keys, wrong types and out-of-range
values raise `ConfigError` naming the file and the dotted key. Relative paths resolve against
the directory of server.yaml. deploy/examples/server.yaml documents every key.

Paths left out (tls.*, fleet_key, fleet_signing_key) mean "the files `fleet-server init` makes
under state_dir"; paths given are the operator's own and must exist when they are used.
"""

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from server.example_config import missing_config_hint
from server.paths import ServerPaths
from ticket.config_schema import SchemaLoader, read_document, rejecting_duplicate_keys
from ticket.runconfig import (
    OPTIMIZERS,
    ConfigValue,
    RunConfig,
    RunConfigError,
    RunPlacement,
    SearchSettings,
    TrainingSettings,
    to_run_config,
)
from ticket.tls import TlsFiles

__all__ = [
    "OPTIMIZERS",
    "WILDCARD_HOSTS",
    "ConfigError",
    "FleetConfig",
    "ListenConfig",
    "RunSection",
    "TlsConfig",
    "load_config",
]

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
WHEN_DONE = ("idle", "continue", "exit")  # run.when_done: see RunSection


class ConfigError(Exception):
    """server.yaml is missing, unreadable, or does not fit the schema."""


@dataclass(frozen=True)
class ListenConfig:
    host: str = "0.0.0.0"  # the SuperLink's address for nodes and the `flwr` CLI
    port: int = field(default=9092, metadata={"ge": 1, "le": 65535})


@dataclass(frozen=True)
class TlsConfig:
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    # Names and addresses the development server certificate covers (its SANs).
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class RunSection(TrainingSettings):
    """The training run: the training settings of ticket/runconfig.py (the same names, types,
    ranges and defaults; `num_rounds` is run-config key num-rounds), plus where the run is."""

    # The signed .ticket to train; None: the fleet's active ticket (the last one
    # `ticket deploy -c server.yaml` rolled out), in run directory state_dir/runs/NAME-<id12>
    ticket: Path | None = None
    name: str = "main"  # the run directory state_dir/runs/NAME; a new name starts afresh
    # Once a run has trained num_rounds: "idle" (the SuperLink keeps serving the fleet and the
    # next `ticket deploy` starts the next run), "continue" (train on, num_rounds at a time)
    # or "exit" (`fleet-server run` ends: a batch job).
    when_done: str = field(default="idle", metadata={"choices": WHEN_DONE})

    @property
    def training(self) -> TrainingSettings:
        """These settings without the server-only keys."""
        names = [spec.name for spec in fields(TrainingSettings)]
        return TrainingSettings(**{name: getattr(self, name) for name in names})


@dataclass(frozen=True)
class FleetConfig:
    state_dir: Path
    run: RunSection
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    node_auth: bool = True  # admit only nodes enrolled with `fleet-server enroll`
    fleet_key: Path | None = None  # PEM Ed25519 public key every ticket must be signed by
    fleet_signing_key: Path | None = None  # its private half (`ticket sign --key`)

    @property
    def paths(self) -> ServerPaths:
        return ServerPaths(self.state_dir)

    @property
    def is_dev_pki(self) -> bool:
        """No tls paths given: `init` writes a development CA and server certificate."""
        return self.tls.ca_cert is None

    @property
    def tls_files(self) -> TlsFiles:
        if self.tls.ca_cert is None or self.tls.server_cert is None or self.tls.server_key is None:
            pki = self.paths.pki_dir
            return TlsFiles(pki / "ca.crt", pki / "server.crt", pki / "server.key")
        return TlsFiles(self.tls.ca_cert, self.tls.server_cert, self.tls.server_key)

    @property
    def fleet_public_key(self) -> Path:
        return self.fleet_key or self.paths.keys_dir / "fleet.pub"

    @property
    def fleet_private_key(self) -> Path:
        return self.fleet_signing_key or self.paths.keys_dir / "fleet.key"

    @property
    def connect_host(self) -> str:
        """Where the `flwr` CLI on this machine reaches the SuperLink."""
        return "127.0.0.1" if self.listen.host in WILDCARD_HOSTS else self.listen.host

    @property
    def connect_address(self) -> str:
        host = self.connect_host
        return f"[{host}]:{self.listen.port}" if ":" in host else f"{host}:{self.listen.port}"

    def run_dir(self, ticket_id: str | None = None) -> Path:
        """runs/NAME for a configured ticket, runs/NAME-<id12> for the active `ticket_id`, so
        each deployed ticket trains in a run of its own."""
        name = self.run.name if ticket_id is None else f"{self.run.name}-{ticket_id[:12]}"
        return self.paths.run_dir(name)

    def run_config(
        self, ticket: Path, run_dir: Path, *, num_rounds: int | None = None
    ) -> dict[str, ConfigValue]:
        """The ServerApp's run config (`flwr run --run-config`) for `ticket` in `run_dir`; the
        same every time, so a re-run resumes from the run directory's checkpoints.
        `num_rounds`: where the run ends, if not at run.num_rounds (run.when_done: continue)."""
        fleet_key = None if self.run.allow_unsigned else self.fleet_public_key
        placement = RunPlacement(
            ticket_path=ticket, run_dir=run_dir, fleet_key=fleet_key, roster=self.paths.nodes_file
        )
        training = self.run.training
        if num_rounds is not None:
            training = replace(training, num_rounds=num_rounds)
        return to_run_config(RunConfig(placement=placement, training=training))

    def search_run_config(
        self, ticket: Path, run_dir: Path, search: SearchSettings
    ) -> dict[str, ConfigValue]:
        """The run config of a fleet search (`fleet-server find`) inside `ticket`: its rounds
        train with the run: section's schedule, sampling and secure aggregation."""
        fleet_key = None if self.run.allow_unsigned else self.fleet_public_key
        placement = RunPlacement(
            mode="find",
            ticket_path=ticket,
            run_dir=run_dir,
            fleet_key=fleet_key,
            roster=self.paths.nodes_file,
        )
        run = RunConfig(placement=placement, training=self.run.training, search=search)
        return to_run_config(run)


def _as_run_key(match: "re.Match[str]") -> str:
    """A run-config key of a message as server.yaml spells it: round-goal -> run.round_goal."""
    return "run." + match.group(1).replace("-", "_")


_YAML_LOADER = rejecting_duplicate_keys(yaml.SafeLoader)  # a key given twice is an error


def load_config(path: Path | str) -> FleetConfig:
    path = Path(path)
    if not path.exists():  # the one error an operator meets first: say how to get a file
        raise ConfigError(f"{path}: no such file; {missing_config_hint(path)}")
    data = read_document(
        path,
        parse=lambda text: yaml.load(text, Loader=_YAML_LOADER),  # a SafeLoader: no objects
        parse_error=yaml.YAMLError,
        error_type=ConfigError,
    )
    loader = SchemaLoader(str(path), path.absolute().parent, error_type=ConfigError)
    run = data.get("run") if isinstance(data, dict) else None
    if isinstance(run, dict) and "rounds" in run:
        raise loader.error("run.rounds", "renamed: use run.num_rounds (the run-config key's name)")
    try:
        config: FleetConfig = loader.build(FleetConfig, {} if data is None else data, "")
    except RunConfigError as error:  # keys valid one by one, not together: say them as run.*
        message = str(error).removeprefix("run config: ")
        message = re.sub(r"\b([a-z]+(?:-[a-z]+)+)\b", _as_run_key, message)
        raise loader.error("run", message) from None
    given = [name for name in ("ca_cert", "server_cert", "server_key") if getattr(config.tls, name)]
    if given and len(given) != 3:
        raise loader.error(
            "tls", "give all of ca_cert, server_cert and server_key, or none (init makes them)"
        )
    if not config.tls.hosts:
        raise loader.error("tls.hosts", "needs at least one name or address")
    return config
