"""Flower's SuperLink and the `flwr` CLI as processes: the SuperLink's command line, the CLI's
connection, node registration, run submission, following and status.

Shared by `fleet-server run` (server/fleet.py) and the loopback launcher of tests and demos
(loopback/launcher.py). Every Flower process gets its own FLWR_HOME, telemetry and update checks
off, and this environment's executables first on PATH (superexec starts `flwr-serverapp` by
name). The `flwr` CLI reads its `[superlink.NAME]` connection from `$FLWR_HOME/config.toml`.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticket import process_guard
from ticket.config_text import ConfigValue, toml_values
from ticket.tls import TlsFiles

FINISHED_PREFIX = "finished:"
COMPLETED = "finished:completed"
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_NODE_ID = re.compile(r"SuperNode (\d+) registered")
_ROUND_START = re.compile(r"\[ROUND (\d+)/\d+\]")
_STRATEGY_END = "Strategy execution finished"
CLI_TIMEOUT_S = 120.0


class SuperLinkError(RuntimeError):
    """A Flower process could not be started, or the `flwr` CLI could not do what was asked."""


def flower_env(home: Path, bin_dir: Path) -> dict[str, str]:
    """The environment of a Flower process whose FLWR_HOME is `home`."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        # superexec starts flwr-serverapp / flwr-clientapp by name: use this environment's.
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    return env


def superlink_command(
    bin_dir: Path,
    *,
    host: str,
    port: int,
    database: Path,
    tls: TlsFiles | None,
    node_auth: bool,
    extra: Sequence[str] = (),
) -> list[str]:
    """`flower-superlink` with TLS (or `--insecure` when `tls` is None), node authentication,
    a database that survives restarts, and no run-time dependency installation."""
    if node_auth and tls is None:
        raise SuperLinkError("node authentication needs TLS")
    security = ["--insecure"] if tls is None else tls.superlink_args()
    if node_auth:
        security.append("--enable-supernode-auth")
    return [
        str(bin_dir / "flower-superlink"),
        *security,
        *extra,
        *("--host", host, "--port", str(port)),
        *("--database", str(database)),
        "--disable-runtime-dependency-installation",
    ]


def spawn(
    command: Sequence[str], *, log_path: Path, env: Mapping[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """Start `command` in a session (process group) of its own, output to `log_path`; its tree
    dies with this process (ticket.process_guard)."""
    cwd.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:  # the child keeps its own descriptor
        # A group of its own, and a watcher that kills its tree (superexec, apps) if we die.
        return process_guard.spawn(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
        )


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by `pid` (started with start_new_session=True)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(popen: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM the process group of `popen`, SIGKILL it after `grace_s`."""
    signal_group(popen.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=grace_s)
    signal_group(popen.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=5.0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def is_listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def wait_for_port(
    port: int,
    *,
    timeout_s: float,
    alive: Callable[[], None] | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Until something accepts TCP connections on host:`port`; `alive()` may raise meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_listening(host, port):
            return
        if alive is not None:
            alive()
        time.sleep(0.5)
    raise SuperLinkError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


@dataclass(frozen=True)
class FlowerCli:
    """The `flwr` command against one SuperLink connection written in `home`/config.toml."""

    home: Path  # the CLI's FLWR_HOME
    bin_dir: Path
    connection: str

    def env(self) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        return flower_env(self.home, self.bin_dir)

    def write_connection(self, address: str, ca_cert: Path | None) -> None:
        """`[superlink.NAME]` for `address`: TLS trusting `ca_cert`, or plaintext when None."""
        self.home.mkdir(parents=True, exist_ok=True)
        trust = (
            "insecure = true"
            if ca_cert is None
            else f"root-certificates = {json.dumps(str(ca_cert))}"
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.connection}"\n\n'
            f'[superlink.{self.connection}]\naddress = "{address}"\n{trust}\n'
        )

    def register_node(self, public_key: Path, *, name: str) -> int:
        """`flwr supernode register`: let the node holding this key's private half join; its
        node id."""
        result = self._flwr(
            "supernode", "register", str(public_key), self.connection, "--name", name
        )
        match = _NODE_ID.search(result.stdout)
        if result.returncode != 0 or match is None:
            raise SuperLinkError(
                f"flwr supernode register {public_key.name}: {_tail(result.stdout)}"
            )
        return int(match.group(1))

    def list_nodes(self) -> list[dict[str, Any]]:
        """`flwr supernode list --format json`: one dict per node ("node-id", "status",
        "online-at", "offline-at", "created-at", ...)."""
        result = self._flwr("supernode", "list", self.connection, "--format", "json")
        try:
            nodes: list[dict[str, Any]] = json.loads(result.stdout)["nodes"]
        except (ValueError, KeyError, TypeError) as error:
            raise SuperLinkError(f"flwr supernode list failed: {_tail(result.stdout)}") from error
        return nodes

    def run_status(self, run_id: int) -> str:
        """A run's status, e.g. "running", "finished:completed"."""
        result = self._flwr("ls", self.connection, "--run-id", str(run_id), "--format", "json")
        try:
            status: str = json.loads(result.stdout)["runs"][0]["status"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise SuperLinkError(f"flwr ls failed: {_tail(result.stdout)}") from error
        return status

    def stop_run(self, run_id: int) -> None:
        """`flwr stop`; a run that is already finished is left as it is."""
        self._flwr("stop", str(run_id), self.connection)

    def submit(
        self,
        app_dir: Path,
        run_config: Mapping[str, ConfigValue],
        *,
        log_path: Path,
        federation_config: Mapping[str, ConfigValue] | None = None,
    ) -> subprocess.Popen[bytes]:
        """`flwr run APP NAME --run-config ... --stream`, its output to `log_path`; follow it
        with `follow_stream` and read its run id with `run_id_from_log`."""
        command = [
            str(self.bin_dir / "flwr"),
            *("run", str(app_dir), self.connection),
            *("--run-config", toml_values(dict(run_config))),
            *(
                ("--federation-config", toml_values(dict(federation_config)))
                if federation_config
                else ()
            ),
            "--stream",
        ]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            return process_guard.spawn(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=app_dir,
            )

    def wait_finished(
        self, run_id: int, *, deadline: float, check: Callable[[], None] | None = None
    ) -> str:
        """Poll `flwr ls` until the run is finished; its status, or "timeout"."""
        while True:
            status = self.run_status(run_id)
            if status.startswith(FINISHED_PREFIX):
                return status
            if time.monotonic() > deadline:
                return "timeout"
            if check is not None:
                check()
            time.sleep(2.0)

    def _flwr(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(self.bin_dir / "flwr"), *args],
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=CLI_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SuperLinkError(f"flwr {args[0]} got no answer in {CLI_TIMEOUT_S:.0f} s") from None


def run_id_from_log(log_path: Path) -> int | None:
    """The run id `flwr run` printed, once it has."""
    match = _RUN_ID.search(log_path.read_text(errors="replace")) if log_path.exists() else None
    return int(match.group(1)) if match else None


def follow_stream(
    stream: subprocess.Popen[bytes],
    log_path: Path,
    *,
    deadline: float,
    offset: int = 0,
    on_round: Callable[[int], None] | None = None,
    poll_s: float = 0.5,
) -> dict[str, float]:
    """Wait for `flwr run --stream` to end; when each round (and the strategy) was logged.

    Keys are run-wide round numbers (Flower's `[ROUND k/N]` plus `offset`) and "end".
    """
    marks: dict[str, float] = {}
    while True:
        finished = stream.poll() is not None
        text = log_path.read_text(errors="replace")
        now = time.monotonic()
        for logged in _ROUND_START.findall(text):
            number = str(int(logged) + offset)
            if number not in marks:
                marks[number] = now
                if on_round is not None:
                    on_round(int(number))
        if _STRATEGY_END in text:
            marks.setdefault("end", now)
        if finished or now > deadline:
            return marks
        time.sleep(poll_s)


def round_walls(marks: Mapping[str, float]) -> dict[int, float]:
    """Round k lasted from its `[ROUND k/N]` line to the next one (or to the strategy's end)."""
    starts = sorted((int(key), at) for key, at in marks.items() if key != "end")
    if not starts:
        return {}
    ends = [at for _, at in starts[1:]] + [marks.get("end", float("nan"))]
    return {number: end - start for (number, start), end in zip(starts, ends, strict=True)}


def _tail(text: str) -> str:
    return text.strip()[-500:]
