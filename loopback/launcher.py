"""A real Flower deployment on one machine: a SuperLink and one SuperNode per device, on loopback.

Every Flower process is a separate OS process started here in its own session (process group),
with its own FLWR_HOME under the work dir, telemetry and update checks off, and its output in
`<workdir>/logs/`. The run is submitted with `flwr run` against a `[superlink.NAME]` connection
written to the launcher's own `$FLWR_HOME/config.toml`. `Loopback` stops every process it started
(SIGTERM to each group, SIGKILL after a grace period, then any straggling descendant by pid) when
its `with` block ends, whether by return, exception or Ctrl-C; if the launcher itself is killed
(SIGKILL, a CI timeout killing pytest), each process's watcher (ticket.process_guard) kills its
tree.

With `tls` the SuperLink serves TLS and every client (SuperNodes, daemons' nodes, the `flwr`
CLI) verifies it against the CA; with `node_auth` as well, the SuperLink admits only nodes
whose public keys were registered (`node_keys`, registered before any node starts).
Without `tls` everything runs in plaintext (`--insecure`), for the Simulation Engine and for
tests of the launcher itself.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import psutil

from server.run_log import RunLog
from server.superlink import (
    COMPLETED,
    FINISHED_PREFIX,
    FlowerCli,
    SuperLinkError,
    flower_env,
    follow_stream,
    free_port,
    round_walls,
    run_id_from_log,
    superlink_command,
    wait_for_port,
)
from ticket import process_guard, runconfig
from ticket.config_text import ConfigValue, toml_values
from ticket.tls import TlsFiles

if TYPE_CHECKING:
    from loopback.devices import Device

logger = logging.getLogger(__name__)

CONNECTION = "loopback"
# The launcher's errors are the SuperLink module's: one class to catch, whichever layer raised.
LoopbackError = SuperLinkError
_round_walls = round_walls  # the tests' name for it

__all__ = [
    "COMPLETED",
    "FINISHED_PREFIX",
    "Loopback",
    "LoopbackError",
    "RunOutcome",
    "flower_env",
    "free_port",
    "wait_for_port",
]


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time, so a recycled pid is never mistaken for ours."""

    pid: int
    create_time: float
    label: str

    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            same = abs(process.create_time() - self.create_time) < 0.01
            return same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


@dataclass
class _Started:
    label: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class RunOutcome:
    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed", or "timeout"
    wall_s: float  # from submission until the status was final
    rounds: list[dict[str, Any]]  # the run directory's round log (server/run_log.py), all lines
    round_wall_s: dict[int, float] = field(default_factory=dict)  # as seen in the log stream

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


@dataclass
class Loopback:
    """SuperLink + one SuperNode per entry of `node_configs`, as processes; use as a context.

    With `simulation=True` the SuperLink runs Flower's Simulation Engine instead (Ray, virtual
    nodes in one process tree; `run(federation_config={"num-supernodes": N})`) and
    `node_configs` must be empty.
    """

    workdir: Path
    app_dir: Path  # the Flower app: a directory with pyproject.toml
    node_configs: list[dict[str, ConfigValue]]
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    grace_s: float = 10.0
    sample_every_s: float = 1.0
    superlink_port: int = 0  # 0: chosen free
    simulation: bool = False
    # `edge-daemon run -c PATH` per entry: devices whose daemon starts their SuperNode.
    daemon_configs: list[Path] = field(default_factory=list)
    tls: TlsFiles | None = None
    node_auth: bool = False  # needs tls; register `node_keys` (OpenSSH public keys) first
    node_keys: list[Path] = field(default_factory=list)
    started: list[_Started] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)  # labels stopped on purpose (fault injection)
    attempts: int = 0  # `run` calls so far; each streams to logs/flwr-run-<attempt>.log
    seen: dict[int, ProcessId] = field(default_factory=dict)  # every pid observed in our trees
    peak_rss: dict[str, int] = field(default_factory=dict)  # "label/process name" -> bytes
    _stop_sampling: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of_devices(
        cls,
        workdir: Path,
        app_dir: Path,
        devices: "Sequence[Device]",
        *,
        superlink_port: int,
        tls: TlsFiles,
        enrolled: "Sequence[Device] | None" = None,
        **options: Any,
    ) -> "Loopback":
        """A secure fleet of edge daemons (loopback.devices): TLS, node authentication, and the
        keys of `enrolled` (default: every device) registered before any node starts."""
        return cls(
            workdir,
            app_dir,
            [],
            daemon_configs=[device.config for device in devices],
            superlink_port=superlink_port,
            tls=tls,
            node_auth=True,
            node_keys=[device.public_key for device in (devices if enrolled is None else enrolled)],
            **options,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "Loopback":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        if not self.superlink_port:
            self.superlink_port = free_port()
        address = f"127.0.0.1:{self.superlink_port}"
        self.cli.write_connection(address, None if self.tls is None else self.tls.ca_cert)
        simulation: list[str] = []
        if self.simulation:
            if self.node_configs:
                raise LoopbackError("a simulation has virtual nodes only: node_configs is for real")
            simulation = [
                *("--simulation", "--isolation", "subprocess"),
                *("--control-api-address", f"127.0.0.1:{free_port()}"),
            ]
        command = superlink_command(
            self.bin_dir,
            host="127.0.0.1",
            port=self.superlink_port,
            database=self.workdir / "superlink" / "state.db",
            tls=self.tls,
            node_auth=self.node_auth,
            extra=simulation,
        )
        self._spawn(
            "superlink", ["flower-superlink", *command[1:]], home=self.workdir / "superlink"
        )
        wait_for_port(self.superlink_port, timeout_s=120.0, alive=self._check_alive)
        for index, key in enumerate(self.node_keys):
            self.register_node(key, name=f"node-{index}")
        client_security = (
            ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca_cert)]
        )
        for index, config in enumerate(self.node_configs):
            self._spawn(
                f"supernode-{index}",
                [
                    "flower-supernode",
                    *client_security,
                    *("--superlink", address),
                    *("--host", "127.0.0.1", "--port", str(free_port())),
                    *("--node-config", toml_values(config)),
                ],
                home=self.workdir / f"supernode-{index}",
            )
        for index, config_path in enumerate(self.daemon_configs):
            self._spawn(
                f"daemon-{index}",
                ["edge-daemon", "run", "-c", str(config_path)],
                home=self.workdir / f"daemon-{index}",
            )
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def stop(self) -> None:
        """SIGTERM every group we started, SIGKILL after `grace_s`, then any leftover by pid."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5.0)
        self._sample()  # the final tree, so late children are known and killed too
        for started in self.started:
            _signal_group(started.popen, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for started in self.started:
            with suppress(subprocess.TimeoutExpired):
                started.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for started in self.started:
            _signal_group(started.popen, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                started.popen.wait(timeout=5.0)
        # Group signals miss a descendant that started its own session: kill those by pid, and
        # wait, since a signal is delivered asynchronously.
        leftovers = []
        for process in self.alive():
            with suppress(psutil.NoSuchProcess):
                leftover = psutil.Process(process.pid)
                leftover.kill()
                leftovers.append(leftover)
        psutil.wait_procs(leftovers, timeout=5.0)
        deadline = time.monotonic() + 5.0
        while self.alive() and time.monotonic() < deadline:  # children of init, not ours
            time.sleep(0.05)
        for started in self.started:
            started.log.close()

    def alive(self) -> list[ProcessId]:
        """Processes we started (or that our processes started) that still run."""
        return [process for process in self.seen.values() if process.alive()]

    # -- the run -----------------------------------------------------------------------------

    def run(
        self,
        run_config: Mapping[str, ConfigValue],
        *,
        timeout_s: float = 900.0,
        on_round: Callable[[int], None] | None = None,
        federation_config: Mapping[str, ConfigValue] | None = None,
    ) -> RunOutcome:
        """Submit the app with `flwr run` and follow its log until the run is finished.

        `on_round(k)` is called once as round k starts (fault injection). The rounds come from
        the round log in the config's `run-dir`: a resumed run's outcome lists the rounds of
        earlier attempts too, and its round numbers (here and in `on_round`) are run-wide.
        """
        config = dict(run_config)
        parsed = runconfig.parse(config)
        run_dir = parsed.placement.run_dir
        population = (federation_config or {}).get("num-supernodes")
        if isinstance(population, int) and not isinstance(population, bool):
            parsed.training.check_population(population, "the federation's num-supernodes")
        log = RunLog(run_dir / "rounds.jsonl") if run_dir is not None else None
        earlier = log.read() if log is not None else []
        # Flower logs `[ROUND k/N]` counting from 1 in every attempt; a resumed run starts after
        # the last logged round.
        offset = earlier[-1]["round"] if earlier else 0
        began = time.monotonic()
        self.attempts += 1
        log_path = self.workdir / "logs" / f"flwr-run-{self.attempts}.log"
        stream = self.cli.submit(
            self.app_dir, config, log_path=log_path, federation_config=federation_config
        )
        self._track(stream, "flwr-run")
        try:
            marks = follow_stream(
                stream, log_path, deadline=began + timeout_s, offset=offset, on_round=on_round
            )
        finally:
            if stream.poll() is None:
                _signal_group(stream, signal.SIGKILL)
            stream.wait()
        run_id = run_id_from_log(log_path)
        if run_id is None:
            raise LoopbackError(f"flwr run did not start a run; see {log_path}")
        status = self.cli.wait_finished(run_id, deadline=began + timeout_s, check=self._check_alive)
        wall = time.monotonic() - began
        rounds = log.read() if log is not None else []
        return RunOutcome(
            run_id=run_id,
            status=status,
            wall_s=wall,
            rounds=rounds,
            round_wall_s=round_walls(marks),
        )

    def run_status(self, run_id: int) -> str:
        return self.cli.run_status(run_id)

    # -- fault injection ---------------------------------------------------------------------

    def kill_daemon_node(self, index: int) -> int:
        """SIGKILL the SuperNode that daemon `index` supervises (not the daemon); its pid."""
        daemon = next(s for s in self.started if s.label == f"daemon-{index}")
        for process in _tree(daemon.popen.pid):
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if flower_name(process) == "flower-supernode":
                    self._sample()
                    os.killpg(process.pid, signal.SIGKILL)  # the node and its own children
                    _wait_dead(process, timeout_s=10.0)
                    return process.pid
        raise LoopbackError(f"daemon-{index} runs no flower-supernode")

    def kill_device(self, index: int) -> None:
        """SIGKILL daemon `index` and its node: the device is gone (power lost), and nothing
        is left on it to restart the node."""
        label = f"daemon-{index}"
        daemon = next(s for s in self.started if s.label == label)
        self.killed.add(label)
        self._sample()
        nodes = [
            process
            for process in _tree(daemon.popen.pid)
            if flower_name(process) == "flower-supernode"
        ]
        _signal_group(daemon.popen, signal.SIGKILL)
        for node in nodes:  # a session of its own: not in the daemon's group
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(node.pid, signal.SIGKILL)
            _wait_dead(node, timeout_s=10.0)
        daemon.popen.wait(timeout=10.0)

    def node_pids(self, index: int) -> list[int]:
        """The pids of flower-supernode processes under daemon `index` right now."""
        daemon = next(s for s in self.started if s.label == f"daemon-{index}")
        pids = []
        for process in _tree(daemon.popen.pid):
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if flower_name(process) == "flower-supernode" and process.status() != "zombie":
                    pids.append(process.pid)
        return pids

    def wait_for_daemon_nodes(
        self, count: int, *, timeout_s: float = 60.0, settle_s: float = 5.0
    ) -> None:
        """Until daemons 0..count-1 each run a SuperNode, then `settle_s` more for the nodes'
        first contact with the SuperLink (a node pulls every 3 s). LoopbackError on timeout."""
        deadline = time.monotonic() + timeout_s
        while not all(self.node_pids(i) for i in range(count)):
            if time.monotonic() > deadline:
                raise LoopbackError(f"not every one of {count} daemons started its node")
            time.sleep(0.2)
        time.sleep(settle_s)

    # -- internals ---------------------------------------------------------------------------

    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        return flower_env(home, self.bin_dir)

    @property
    def cli(self) -> FlowerCli:
        """The `flwr` CLI with this launcher's connection (its FLWR_HOME is `<workdir>/cli`)."""
        return FlowerCli(self.workdir / "cli", self.bin_dir, CONNECTION)

    def register_node(self, public_key: Path, *, name: str) -> None:
        """`flwr supernode register`: let the node holding this key's private half join."""
        self.cli.register_node(public_key, name=name)

    def _spawn(self, label: str, command: list[str], *, home: Path) -> None:
        executable = self.bin_dir / command[0]
        log = (self.workdir / "logs" / f"{label}.log").open("wb")
        try:
            # Its own process group, so superexec and apps stop with it, and a watcher that
            # kills its tree if we die (SIGKILL included).
            popen = process_guard.spawn(
                [str(executable), *command[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(home),
                cwd=home,
            )
        except BaseException:
            log.close()
            raise
        self.started.append(_Started(label, popen, log))
        self._track(popen, label)
        logger.info("started %s (pid %d)", label, popen.pid)

    def _track(self, popen: subprocess.Popen[bytes], label: str) -> None:
        with suppress(psutil.NoSuchProcess), self._lock:
            self.seen[popen.pid] = ProcessId(
                popen.pid, psutil.Process(popen.pid).create_time(), label
            )

    def _check_alive(self) -> None:
        for started in self.started:
            code = started.popen.poll()
            if code is not None and started.label not in self.killed:
                raise LoopbackError(
                    f"{started.label} exited with status {code}; "
                    f"see {self.workdir / 'logs' / (started.label + '.log')}"
                )

    def _sample_loop(self) -> None:
        while not self._stop_sampling.wait(self.sample_every_s):
            self._sample()

    def _sample(self) -> None:
        """Record every process in our trees, and each one's peak RSS."""
        for started in self.started:
            for process in _tree(started.popen.pid):
                with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    name = flower_name(process)
                    if not name:  # exited since the walk, a zombie included: nothing to record
                        continue
                    rss = process.memory_info().rss
                    root = process.pid == started.popen.pid
                    key = started.label if root else f"{started.label}/{name}"
                    with self._lock:
                        self.seen.setdefault(
                            process.pid,
                            ProcessId(process.pid, process.create_time(), key),
                        )
                        self.peak_rss[key] = max(self.peak_rss.get(key, 0), rss)


def _tree(pid: int) -> Iterator[psutil.Process]:
    try:
        root = psutil.Process(pid)
        yield root
        yield from root.children(recursive=True)
    except psutil.NoSuchProcess:
        return


def flower_name(process: psutil.Process) -> str:
    """The Flower command a process runs (flwr-clientapp, flower-superexec, ...); "" for one
    that has exited, a zombie not yet reaped included (a tree walk meets those mid-restart),
    and for one whose command line we may not read."""
    try:
        for part in process.cmdline():
            base = Path(part).name
            if base.startswith(("flower-", "flwr-", "flwr")):
                return base
        return process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return ""


def _wait_dead(process: psutil.Process, *, timeout_s: float) -> None:
    """Until `process` (not our child: its parent reaps it) is gone or a zombie."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise LoopbackError(f"pid {process.pid} still runs {timeout_s:.0f} s after SIGKILL")


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)  # start_new_session=True: the group id is the pid
