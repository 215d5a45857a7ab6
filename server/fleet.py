"""`fleet-server init`, `run` and `find`: the state directory, and the SuperLink with the runs
it serves as processes.

`run` starts `flower-superlink` (TLS, node authentication, `--database` in the state directory,
no run-time dependency installation, its own FLWR_HOME) in a process group of its own, records
it in the pid file, and hands over to the service loop (server/service.py), which submits the
Flower app (state_dir/app, written from ticket/runconfig.py) with the run config server.yaml
makes for the ticket to train, follows it, and moves on to the next. Every submission for a
ticket uses the same run directory and settings, so after a kill the ServerApp resumes from the
last checkpointed round.
"""

import contextlib
import importlib.metadata
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.api import CONNECTION
from server.config import WILDCARD_HOSTS, FleetConfig
from server.deployments import DeploymentLedger, LedgerError
from server.errors import BadArgumentError, FleetError, NoActiveTicketError
from server.node_snapshot import NodeRefresher
from server.processes import PidFile, Recorded, stop_groups
from server.run_log import RunLog
from server.run_status import summarize_round
from server.service_state import STOPPED, ServicePublisher
from server.superlink import (
    COMPLETED,
    FINISHED_PREFIX,
    FlowerCli,
    SuperLinkError,
    flower_env,
    is_listening,
    run_id_from_log,
    spawn,
    superlink_command,
    wait_for_port,
)
from ticket import crypto, runconfig
from ticket.atomic import atomic_write_bytes, atomic_write_text, instance_lock
from ticket.runconfig import SearchSettings
from ticket.tls import write_dev_pki

COMPLETED_STATUS = COMPLETED
STARTUP_TIMEOUT_S = 120.0


def flower_cli(config: FleetConfig, bin_dir: Path | None = None) -> FlowerCli:
    """The `flwr` CLI with a connection to this server's SuperLink."""
    return FlowerCli(config.paths.cli_home, bin_dir or Path(sys.executable).parent, CONNECTION)


def write_app(config: FleetConfig) -> Path:
    """The Flower app to submit, written afresh from ticket/runconfig.py: a directory with
    only its pyproject.toml, whose components are the ServerApp and ClientApp installed here."""
    try:
        version = importlib.metadata.version(runconfig.PROJECT)
    except importlib.metadata.PackageNotFoundError:
        raise FleetError(
            f"{runconfig.PROJECT} is not installed: the Flower app's components are its "
            "installed modules; install it with `pip install -e .`"
        ) from None
    return runconfig.write_app(config.paths.app_dir, name=runconfig.PROJECT, version=version)


# -- init ----------------------------------------------------------------------------------


@dataclass
class InitReport:
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def init_state(config: FleetConfig, hosts: list[str] | None = None) -> InitReport:
    """State directory (0700), development PKI and fleet signing key, each unless already there
    or configured as the operator's own files (which must exist). Never overwrites a key."""
    report = InitReport()
    state = config.state_dir
    if not state.exists():
        report.created.append(state)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    _init_tls(config, hosts, report)
    _init_fleet_key(config, report)
    flower_cli(config).write_connection(config.connect_address, config.tls_files.ca_cert)
    return report


def _init_tls(config: FleetConfig, hosts: list[str] | None, report: InitReport) -> None:
    files = config.tls_files
    paths = (files.ca_cert, files.server_cert, files.server_key)
    if not config.is_dev_pki:
        for key, path in zip(("ca_cert", "server_cert", "server_key"), paths, strict=True):
            if not path.is_file():
                raise FleetError(f"tls.{key}: {path}: no such file (the operator's own PKI)")
        report.kept += paths
        return
    if all(path.exists() for path in paths):
        report.kept += paths
        return
    names = list(hosts or config.tls.hosts)
    if config.listen.host not in WILDCARD_HOSTS and config.listen.host not in names:
        names.append(config.listen.host)
    write_dev_pki(config.paths.pki_dir, names)
    config.paths.pki_dir.chmod(0o700)
    report.created += paths


def _init_fleet_key(config: FleetConfig, report: InitReport) -> None:
    public, private = config.fleet_public_key, config.fleet_private_key
    if public.exists():
        _check_public_key(public)
        report.kept.append(public)
        if private.exists():
            report.kept.append(private)
        return
    if private.exists():  # the public half derives from the private one
        pem = private.read_bytes()
        try:
            public_pem = crypto.public_key_of(pem)
        except crypto.KeyFormatError as error:
            raise FleetError(f"{private}: {error}") from None
        atomic_write_bytes(public, public_pem)
        report.kept.append(private)
        report.created.append(public)
        return
    if config.fleet_key is not None:
        raise FleetError(f"fleet_key: {public}: no such file (the operator's own key)")
    private_pem, public_pem = crypto.generate_signing_key()
    private.parent.mkdir(parents=True, exist_ok=True)
    private.parent.chmod(0o700)
    atomic_write_bytes(private, private_pem, mode=0o600)
    atomic_write_bytes(public, public_pem)
    report.created += [private, public]


def _check_public_key(path: Path) -> None:
    try:
        crypto.load_public_key(path.read_bytes())
    except crypto.KeyFormatError as error:
        raise FleetError(f"{path}: {error}") from None


# -- run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingTarget:
    """What `run` trains, and where its checkpoints go."""

    ticket: Path
    run_dir: Path
    ticket_id: str | None = None  # the active ticket's id, when server.yaml names no ticket


def active_ticket(config: FleetConfig) -> str | None:
    """The content id the deployment ledger holds active; FleetError if it is damaged."""
    try:
        return DeploymentLedger(config.paths.deployments).active()
    except LedgerError as error:
        raise FleetError(str(error)) from None


def training_target(config: FleetConfig) -> TrainingTarget:
    """run.ticket if server.yaml gives one, else the active ticket of the deployment ledger."""
    if config.run.ticket is not None:
        return TrainingTarget(config.run.ticket, config.run_dir())
    active = active_ticket(config)
    if active is None:
        raise NoActiveTicketError(
            "run.ticket is not set and no ticket is active: roll one out with "
            "`ticket deploy FILE -c server.yaml`, or set run.ticket"
        )
    bundle = DeploymentLedger(config.paths.deployments).bundle(active)
    return TrainingTarget(bundle, config.run_dir(active), active)


@dataclass(frozen=True)
class SearchJob:
    """A fleet search for `fleet-server find` (server/fleet_search.py)."""

    ticket: Path  # the (dense) ticket to search in
    run_dir: Path  # the search's checkpoints; the same directory resumes it
    out: Path  # where the ServerApp writes the found ticket
    settings: SearchSettings
    # Let the server see each device's update; by default a search is under secure
    # aggregation whatever run.secagg says, its updates as private as training's.
    plaintext: bool = False


@dataclass
class FleetServer:
    """The SuperLink and the training run of one server.yaml; `run()` stops what it started."""

    config: FleetConfig
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    grace_s: float = 10.0
    poll_s: float = 1.0
    out: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    _groups: list[Recorded] = field(default_factory=list)
    _popens: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _record: Callable[[], None] = field(default=lambda: None)  # rewrites the pid file

    @property
    def cli(self) -> FlowerCli:
        return flower_cli(self.config, self.bin_dir)

    def run(self) -> str:
        """Start the SuperLink and serve the fleet: train what the ledger (or run.ticket) says,
        switching when it changes (server/service.py); returns only under `when_done: exit`
        (the last run's status), else runs until SIGTERM."""
        return self._serve(self._train, program="fleet-server run")

    def find(self, job: "SearchJob") -> str:
        """Start the SuperLink, submit (or resume) the fleet search `job`, follow it to the
        end; its status. The found ticket is at `job.out` (unsigned: the caller signs it)."""
        if not job.ticket.is_file() and not job.settings.search_fit_encoding:
            raise BadArgumentError(f"{job.ticket}: no such ticket to search in")
        return self._serve(lambda: self.search(job), program="fleet-server find")

    def _serve(self, work: Callable[[], str], *, program: str) -> str:
        paths = self.config.paths
        pid_file = PidFile(paths.pid_file)
        self._check_ready()
        # Held before the leftovers are cleared: a second `run` would take the first one's
        # SuperLink for a leftover and kill it.
        with instance_lock(paths.lock_file, pid=os.getpid(), program=program):
            self._clear_leftovers(pid_file)
            owner = Recorded.of("fleet-server", os.getpid())
            self._record = lambda: pid_file.write(owner, self._groups)
            try:
                self._record()
                self._start_superlink()
                self._stop_earlier_run()
                return work()
            finally:
                with _signals_deferred():  # a second Ctrl-C must not cut the cleanup short
                    self.stop()
                    pid_file.remove()

    def _train(self) -> str:
        from server.service import TrainingService

        publisher = ServicePublisher(self.config.paths.service_file, os.getpid())
        refresher = NodeRefresher(self.config.paths.nodes_snapshot, self.cli.list_nodes)
        try:
            with refresher:
                return TrainingService(self, publisher).serve()
        finally:
            publisher.update(phase=STOPPED, detail="fleet-server run has stopped")

    def stop(self) -> None:
        """Stop every process group we started (SIGTERM, then SIGKILL after `grace_s`)."""
        stop_groups(self._groups, grace_s=self.grace_s)
        for popen in self._popens:
            popen.poll()  # reap
        self._groups.clear()

    # -- steps ---------------------------------------------------------------------------------

    def _check_ready(self) -> None:
        config = self.config
        if not config.state_dir.is_dir():
            raise FleetError(f"{config.state_dir}: no state directory; run `fleet-server init`")
        for path in (config.tls_files.ca_cert, config.tls_files.server_cert):
            if not path.is_file():
                raise FleetError(f"{path}: missing; run `fleet-server init`")
        if config.run.ticket is not None and not config.run.ticket.is_file():
            raise FleetError(f"run.ticket: {config.run.ticket}: no such file")
        if config.run.ticket is None and (active := active_ticket(config)) is not None:
            # A damaged ledger, or one whose active ticket lost its bundle, stops us before
            # anything starts (later, while serving, the service idles and says why instead).
            ledger = DeploymentLedger(config.paths.deployments)
            bundle = ledger.bundle(active)
            if not bundle.is_file():
                raise FleetError(
                    f"{ledger.file}: the active ticket "
                    f"{active} has no bundle ({bundle} is missing); roll it out again with "
                    "`ticket deploy FILE -c server.yaml`"
                )
        if not config.run.allow_unsigned and not config.fleet_public_key.is_file():
            raise FleetError(f"{config.fleet_public_key}: no fleet key; run `fleet-server init`")
        write_app(config)  # before anything starts: a project that is not installed stops us

    def _clear_leftovers(self, pid_file: PidFile) -> None:
        owner, groups = pid_file.read()
        if owner is not None and owner.is_alive() and owner.pid != os.getpid():
            raise FleetError(
                f"fleet-server is already running for {self.config.state_dir} (pid {owner.pid}); "
                "stop it first"
            )
        stopped = stop_groups(groups, grace_s=self.grace_s)
        if stopped:
            self.out(f"stopped {stopped} process(es) left by a fleet-server that was killed")
        pid_file.remove()
        address = self.config.connect_address
        if is_listening(self.config.connect_host, self.config.listen.port):
            raise FleetError(
                f"{address} is in use by another process; stop it or change listen.port"
            )

    def _start_superlink(self) -> None:
        config, paths = self.config, self.config.paths
        command = superlink_command(
            self.bin_dir,
            host=config.listen.host,
            port=config.listen.port,
            database=paths.database,
            tls=config.tls_files,
            node_auth=config.node_auth,
        )
        paths.superlink_home.mkdir(parents=True, exist_ok=True)
        log = paths.logs_dir / "superlink.log"
        popen = spawn(
            command, log_path=log, env=self._env(paths.superlink_home), cwd=paths.superlink_home
        )
        self._track("superlink", popen)
        self.cli.write_connection(config.connect_address, config.tls_files.ca_cert)

        def alive() -> None:
            if popen.poll() is not None:
                raise FleetError(f"the SuperLink exited with status {popen.returncode}; see {log}")

        wait_for_port(
            config.listen.port, timeout_s=STARTUP_TIMEOUT_S, alive=alive, host=config.connect_host
        )
        self.out(
            f"SuperLink listening on {config.listen.host}:{config.listen.port} (TLS"
            f"{', node authentication' if config.node_auth else ''}); logs in {paths.logs_dir}"
        )

    def _stop_earlier_run(self) -> None:
        """A run submitted by a killed fleet-server is still "running" in the database: stop it
        so that no two ServerApps ever write the same run directory."""
        earlier = read_run_file(self.config.paths.run_file)
        run_id = earlier.get("run_id")
        if not isinstance(run_id, int):
            return
        try:
            status = self.cli.run_status(run_id)
            if not status.startswith(FINISHED_PREFIX):
                self.cli.stop_run(run_id)
                self.out(f"stopped run {run_id} left {status} by an earlier fleet-server")
        except SuperLinkError:
            pass  # not in this database (e.g. a fresh one): nothing to stop

    def search(self, job: "SearchJob", on_level: Callable[[str], None] = lambda level: None) -> str:
        """Submit (or resume) the fleet search `job` on our SuperLink and follow it; its status.
        `on_level` is called with the name of each level as it finishes."""
        levels: set[str] = set()
        finished = sorted(job.run_dir.glob("level-*.state")) if job.run_dir.is_dir() else []
        if finished:
            self.out(f"resuming the search in {job.run_dir} after {len(finished)} level(s)")
        levels.update(path.name for path in finished)

        def progress(run_id: int | None) -> None:
            for path in sorted(job.run_dir.glob("level-*.state")):
                if path.name not in levels:
                    levels.add(path.name)
                    self.out(f"search: {path.stem} finished")
                    on_level(path.stem)

        config = self.config
        if not job.plaintext and not config.run.secagg:
            config = replace(config, run=replace(config.run, secagg=True))
        status = self.follow(
            config.search_run_config(job.ticket, job.run_dir, job.settings),
            label=f"search {job.settings.search_method}, {job.run_dir}",
            on_poll=progress,
        )
        self.out(f"search: {status}")
        return status

    def follow(
        self,
        run_config: dict[str, Any],
        *,
        label: str,
        on_poll: Callable[[int | None], None],
    ) -> str:
        """Submit a run, follow it to the end, calling `on_poll(run id once known)` every poll;
        its status."""
        config, paths = self.config, self.config.paths
        attempt = sum(1 for _ in paths.logs_dir.glob("flwr-run-*.log")) + 1
        stream_log = paths.logs_dir / f"flwr-run-{attempt}.log"
        stream = self.cli.submit(paths.app_dir, run_config, log_path=stream_log)
        self._track("flwr-run", stream)
        run_id = None
        while True:
            if run_id is None and (run_id := run_id_from_log(stream_log)) is not None:
                write_run_file(paths.run_file, run_id, config.run.name)
                self.out(f"run {run_id} submitted ({label})")
            on_poll(run_id)
            self.check_superlink()
            if stream.poll() is not None:
                break
            time.sleep(self.poll_s)
        run_id = run_id if run_id is not None else run_id_from_log(stream_log)
        if run_id is None:
            raise FleetError(f"flwr run did not start a run; see {stream_log}")
        status = self.cli.wait_finished(run_id, deadline=math.inf, check=self.check_superlink)
        on_poll(run_id)
        self.out(f"run {run_id}: {status}")
        return status

    def print_new_rounds(self, log: RunLog, done: set[int], planned: int) -> None:
        """A line for each round of `log` not in `done` (which it adds them to)."""
        for line in log.read():
            if line["round"] in done:
                continue
            done.add(line["round"])
            summary = summarize_round(line)
            accuracy = "-" if summary.accuracy is None else f"{summary.accuracy:.3f}"
            self.out(
                f"round {summary.round}/{planned}: "
                f"{summary.participants} nodes, "
                f"{summary.dropouts} dropped, accuracy {accuracy}, bytes up {summary.bytes_up} "
                f"down {summary.bytes_down}"
            )

    def check_superlink(self) -> None:
        """FleetError if the SuperLink we started has exited."""
        superlink = self._popens[0]
        if superlink.poll() is not None:
            raise FleetError(
                f"the SuperLink exited with status {superlink.returncode}; "
                f"see {self.config.paths.logs_dir / 'superlink.log'}"
            )

    def _track(self, label: str, popen: subprocess.Popen[bytes]) -> None:
        self._popens.append(popen)
        self._groups.append(Recorded.of(label, popen.pid))
        self._record()  # before anything else can go wrong: a kill -9 now leaves a record

    def _env(self, home: Path) -> dict[str, str]:
        return flower_env(home, self.bin_dir)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def read_run_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_file(path: Path, run_id: int, name: str) -> None:
    submitted = datetime.now(UTC).isoformat(timespec="seconds")
    document = {"run_id": run_id, "name": name, "submitted_at": submitted}
    atomic_write_text(path, json.dumps(document) + "\n")
