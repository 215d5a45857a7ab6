"""`ticket deploy`, `ticket rollback` and `ticket deployments`: roll a signed ticket out to the
fleet's connected devices, report each one, and keep the fleet's record of what is active.

    ticket deploy FILE|ID (-c server.yaml | --connection NAME --fleet-key PUB [--ledger DIR])
                  [--canary F] [--max-regression A] [--canary-epochs N] [--timeout S]
    ticket rollback (-c server.yaml | --connection NAME --fleet-key PUB --ledger DIR)
    ticket deployments (-c server.yaml | --ledger DIR) [--json]

A rollout is a Flower run of this project's app with run config `mode = "deploy"`
(server/rollout.py): every connected device verifies the bundle against the fleet key in its
own daemon.yaml, caches it and answers installed or rejected-with-reason; a silent one is
offline. The command prints a line per device as its ack arrives (it follows the run's
progress file), then a table of every device, by node id and, with `-c server.yaml`, the name
it was enrolled under; it exits 0 only if every device installed the ticket (and, with
`--canary`, the canary's evaluation did not regress). The run's `deploy.json` and progress
file are read from its run directory, so run it on the SuperLink's machine (where
`fleet-server run` runs).

With a ledger (server/api.py's DeploymentLedger; `-c server.yaml` uses fleet-server's), a successful
rollout makes the ticket active: `fleet-server run` with no `run.ticket` trains it, and the
next canary compares against it. `ticket rollback` rolls the ticket before it out again and,
once every device holds it, makes it active again.
"""

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticket import runconfig
from ticket.config_schema import describe_bounds
from ticket.config_text import toml_values
from ticket.errors import TicketError
from ticket_cli.commands import HELP
from ticket_cli.exit_codes import ExitCode

if TYPE_CHECKING:  # server.api is loaded only by the commands that use a ledger or server.yaml
    from server.api import DeploymentLedger, OperatorState

ROLLOUT = runconfig.RolloutSettings()  # the flags' defaults: the run config's
# flag -> the run-config setting it sets
FLAGS = {
    "--canary": "canary_fraction",
    "--canary-epochs": "canary_epochs",
    "--max-regression": "canary_max_regression",
    "--min-installed": "min_installed",
}


class DeployError(TicketError):
    """The rollout cannot start (bad arguments, ledger, server.yaml) or did not report."""


@dataclass(frozen=True)
class Fleet:
    """Where a rollout goes, and what records it."""

    connection: str  # a [superlink.NAME] in $FLWR_HOME/config.toml
    flwr_home: Path | None
    fleet_key: Path
    ledger: Path | None  # the deployment ledger's directory; None: nothing is recorded
    nodes_file: Path | None = None  # fleet-server's enrolment records: the devices' names


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help=HELP["deploy"],
        description="Push a signed ticket to the fleet's connected devices and report each one.",
    )
    deploy.add_argument("source", metavar="FILE|ID", help="a .ticket file or a registry id")
    _fleet_options(deploy)
    deploy.add_argument(
        "--canary", type=float, default=ROLLOUT.canary_fraction, help="fraction of devices first"
    )
    deploy.add_argument(
        "--canary-epochs",
        type=int,
        default=ROLLOUT.canary_epochs,
        help="epochs each canary device trains each ticket before scoring it (0: no evaluation)",
    )
    deploy.add_argument(
        "--max-regression",
        type=float,
        default=ROLLOUT.canary_max_regression,
        help="accuracy the new ticket may lose against the active one on the canary",
    )
    deploy.add_argument("--registry", type=Path, help="registry to resolve an ID from")
    deploy.set_defaults(handler=run_deploy)

    rollback = subparsers.add_parser(
        "rollback",
        help=HELP["rollback"],
        description="Roll the ticket before the active one out again and make it active.",
    )
    _fleet_options(rollback)
    rollback.set_defaults(handler=run_rollback)

    listing = subparsers.add_parser(
        "deployments",
        help=HELP["deployments"],
        description="Show the deployment ledger: the active ticket and every rollout.",
    )
    listing.add_argument("-c", "--server-config", type=Path, help="fleet-server's server.yaml")
    listing.add_argument("--ledger", type=Path, help="the deployment ledger's directory")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=run_deployments)


def _fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--server-config",
        type=Path,
        help="fleet-server's server.yaml: its connection, fleet key and ledger",
    )
    parser.add_argument("--connection", help="[superlink.NAME] to submit to")
    parser.add_argument("--fleet-key", type=Path, help="the fleet's public key")
    parser.add_argument("--flwr-home", type=Path, help="FLWR_HOME holding the connection")
    parser.add_argument("--ledger", type=Path, help="deployment ledger directory to record in")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds devices have")
    parser.add_argument(
        "--min-installed",
        type=float,
        default=ROLLOUT.min_installed,
        help="fraction of the devices that must install it for the rollout to succeed",
    )
    parser.add_argument("--run-dir", type=Path, help="where deploy.json goes (default: temp)")


# -- commands ------------------------------------------------------------------------------


def run_deploy(args: argparse.Namespace) -> int:
    rollout = _rollout(args, "--canary", "--max-regression", "--canary-epochs", "--min-installed")
    fleet = _fleet(args)
    run_dir = _run_dir(args)
    ticket_path = _resolve(args.source, args.registry, run_dir, fleet.fleet_key)
    # Checked here too, so a wrong file fails before any device is bothered.
    ticket_id = _verified_id(ticket_path, fleet.fleet_key)
    ledger = _ledger(fleet)
    if ledger is not None:  # keep a copy first: the ledger must always be able to roll back
        ticket_path = ledger.keep_bundle(ticket_id, ticket_path.read_bytes())
        active = _guard(ledger.active)
        if args.canary > 0 and active is not None and active != ticket_id:
            baseline = ledger.bundle(active).resolve()
            rollout = replace(rollout, baseline_ticket_path=baseline)
    names = _names(fleet)
    print(f"deploying {ticket_id[:12]} through {fleet.connection} ...", flush=True)
    document = roll_out(
        fleet, ticket_path, run_dir, args.timeout, rollout, on_ack=_print_ack(names)
    )
    document["reason"] = failure_reason(document, names)
    print(format_acks(document, names))
    _record(ledger, "deploy", ticket_id, document)
    if ledger is not None and document["succeeded"]:
        print(f"active ticket: {ticket_id[:12]}")
    return ExitCode.OK if document["succeeded"] else ExitCode.FAILURE


def run_rollback(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    ledger = _ledger(fleet)
    if ledger is None:
        raise DeployError("rollback needs a deployment ledger: give -c server.yaml or --ledger")
    active, previous = _guard(ledger.active), _guard(ledger.previous)
    if active is None or previous is None:
        raise DeployError(
            f"{ledger.file}: nothing to roll back to (the active ticket is "
            f"{active[:12] if active else 'none'}, with none before it)"
        )
    bundle = ledger.bundle(previous)
    if not bundle.is_file():
        raise DeployError(f"{bundle}: the ledger lost the bundle of ticket {previous[:12]}")
    _verified_id(bundle, fleet.fleet_key)
    print(f"rolling back {active[:12]} -> {previous[:12]} through {fleet.connection} ...")
    rollout = _rollout(args, "--min-installed")
    names = _names(fleet)
    document = roll_out(
        fleet, bundle, _run_dir(args), args.timeout, rollout, on_ack=_print_ack(names)
    )
    document["reason"] = failure_reason(document, names)
    print(format_acks(document, names))
    _record(ledger, "rollback", previous, document)
    if not document["succeeded"]:
        print(f"the active ticket is still {active[:12]}")
        return ExitCode.FAILURE
    print(f"active ticket: {previous[:12]} (was {active[:12]})")
    return ExitCode.OK


def run_deployments(args: argparse.Namespace) -> int:
    if (args.server_config is None) == (args.ledger is None):
        raise DeployError("give exactly one of -c/--server-config and --ledger")
    root = args.ledger if args.ledger is not None else _operator(args.server_config).ledger_dir
    from server.api import DeploymentLedger

    ledger = DeploymentLedger(root)
    events = _guard(ledger.events)
    stack = _guard(ledger.history)
    document = {
        "schema": "ticketfleet.deployments.v1",
        "active": stack[-1] if stack else None,
        "history": stack,
        "events": [vars(event) for event in events],
    }
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
        return ExitCode.OK
    print(f"active ticket: {stack[-1] if stack else 'none'}")
    if len(stack) > 1:
        print(f"a rollback makes active: {stack[-2]}")
    for event in events:
        outcome = "succeeded" if event.succeeded else "FAILED"
        counts = ", ".join(f"{n} {status}" for status, n in sorted(event.counts.items()))
        why = f"  ({event.reason})" if event.reason else ""
        print(f"{event.at}  {event.action:<8} {event.ticket_id[:12]}  {outcome}  {counts}{why}")
    return ExitCode.OK


# -- the rollout run -----------------------------------------------------------------------


def roll_out(
    fleet: Fleet,
    ticket_path: Path,
    run_dir: Path,
    timeout_s: float,
    rollout: runconfig.RolloutSettings,
    *,
    on_ack: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Submit the rollout run (the Flower app written into `run_dir`), give `on_ack` each
    device's ack as the run's progress file shows it, and return the run's `deploy.json`."""
    from server.api import PROGRESS_FILE

    outcome = run_dir / "deploy.json"
    outcome.unlink(missing_ok=True)
    progress = run_dir / PROGRESS_FILE
    progress.unlink(missing_ok=True)
    placement = runconfig.RunPlacement(
        mode="deploy",
        ticket_path=ticket_path.resolve(),
        run_dir=run_dir,
        fleet_key=fleet.fleet_key.resolve(),
    )
    config = runconfig.RunConfig(
        placement=placement,
        training=runconfig.TrainingSettings(round_timeout_s=float(timeout_s)),
        rollout=rollout,
    )
    app = runconfig.write_app(run_dir / "app", name=runconfig.PROJECT, version=_version())
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    if fleet.flwr_home is not None:
        env["FLWR_HOME"] = str(fleet.flwr_home)
    flwr = Path(sys.executable).parent / "flwr"
    command = [str(flwr), "run", str(app), fleet.connection, "--stream"]
    command += ["--run-config", toml_values(runconfig.to_run_config(config))]
    # Its output goes to a file, not a pipe: nobody reads a pipe while the progress is followed.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            follow_progress(progress, on_ack or _ignore, done=lambda: process.poll() is not None)
        finally:
            if process.poll() is None:  # interrupted: stop the submission, as subprocess.run did
                process.kill()
                process.wait()
        log.seek(0)
        said = log.read()
    if not outcome.exists():
        tail = said[-800:]
        raise DeployError(f"the rollout run left no {outcome.name}; flwr run said:\n{tail}")
    document: dict[str, Any] = json.loads(outcome.read_text())
    return document


POLL_S = 0.5  # how often the progress file is read while the rollout runs


def follow_progress(
    path: Path,
    on_ack: Callable[[dict[str, Any]], None],
    *,
    done: Callable[[], bool],
    poll_s: float = POLL_S,
) -> None:
    """Give `on_ack` each ack the progress file gains, until `done()` (then the last ones)."""
    from server.api import read_progress

    offset = 0
    while True:
        finished = done()  # asked first: what was written before it ended is read below
        acks, offset = read_progress(path, offset)
        for ack in acks:
            on_ack(ack)
        if finished:
            return
        time.sleep(poll_s)


def failure_reason(document: Mapping[str, Any], names: Mapping[int, str] | None) -> str:
    """Why the rollout failed, for the ledger and the last line ("" if it succeeded): the run's
    own reason, with the enrolled count when no device was connected."""
    if document["succeeded"]:
        return ""
    reason = str(document.get("reason") or "")
    if not document["nodes"]:
        enrolled = "" if names is None else f": {len(names)} enrolled, 0 online"
        return f"{reason or 'no device connected'}{enrolled}"
    return reason


def format_acks(document: Mapping[str, Any], names: Mapping[int, str] | None = None) -> str:
    """The table of every device's answer, its enrolled name beside its node id."""
    lines = [f"{'node':>20}  {'device':<16} {'status':<9} reason"]
    for node in document["nodes"]:
        mark = " (canary)" if node["canary"] else ""
        name = _name(node["node_id"], names)
        lines.append(
            f"{node['node_id']:>20}  {name:<16} {node['status']:<9} {node['reason']}{mark}"
        )
    counts = _counts(document)
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    canary = document.get("canary")
    if canary:
        verdict = "passed" if canary["passed"] else "FAILED"
        lines.append(f"canary evaluation {verdict}: {canary['reason']}")
    if document["succeeded"]:
        return "\n".join([*lines, f"rollout succeeded: {summary}"])
    reason = str(document.get("reason") or "")
    if not summary:
        return "\n".join([*lines, f"rollout did NOT succeed: {reason or 'no device connected'}"])
    why = f" ({reason})" if reason else ""
    return "\n".join([*lines, f"rollout did NOT succeed: {summary}{why}"])


def _print_ack(names: Mapping[int, str] | None) -> Callable[[dict[str, Any]], None]:
    """One line per device as its ack arrives."""

    def show(ack: dict[str, Any]) -> None:
        node = ack.get("node_id")
        name = _name(node, names) if isinstance(node, int) else "-"
        reason = f": {ack['reason']}" if ack.get("reason") else ""
        mark = " (canary)" if ack.get("canary") else ""
        print(f"  {name} (node {node}) {ack.get('status')}{reason}{mark}", flush=True)

    return show


def _name(node_id: int, names: Mapping[int, str] | None) -> str:
    if names is None:
        return "-"  # no enrolment records: --connection without -c
    return names.get(node_id, "(not enrolled)")


def _ignore(ack: dict[str, Any]) -> None:
    pass


# -- helpers -------------------------------------------------------------------------------


def _rollout(args: argparse.Namespace, *flags: str) -> runconfig.RolloutSettings:
    """The rollout's settings from these flags (the others keep their defaults); an
    out-of-range value is a DeployError naming its flag and the range."""
    rules = {spec.name: spec.metadata for spec in fields(runconfig.RolloutSettings)}
    values = {FLAGS[flag]: getattr(args, flag[2:].replace("-", "_")) for flag in flags}
    for flag in flags:
        name = FLAGS[flag]
        try:
            runconfig.RolloutSettings(**{name: values[name]})
        except runconfig.RunConfigError:
            bounds = describe_bounds(rules[name])
            raise DeployError(f"{flag} must be{bounds}, got {values[name]}") from None
    return runconfig.RolloutSettings(**values)


def _version() -> str:
    """The installed project's version, for the app's pyproject.toml."""
    try:
        return importlib.metadata.version(runconfig.PROJECT)
    except importlib.metadata.PackageNotFoundError:
        raise DeployError(
            f"{runconfig.PROJECT} is not installed: the rollout's Flower app runs its installed "
            "modules; install it with `pip install -e .`"
        ) from None


def _fleet(args: argparse.Namespace) -> Fleet:
    """The rollout's target from -c server.yaml, or from the explicit options."""
    if not 0.0 < args.min_installed <= 1.0:
        raise DeployError(f"--min-installed must be in (0, 1], got {args.min_installed}")
    if args.server_config is not None:
        given = [flag for flag in ("connection", "fleet_key", "flwr_home") if getattr(args, flag)]
        if given:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
            raise DeployError(f"-c/--server-config sets {flags} itself; leave them out")
        fleet = _server_fleet(args.server_config)
        return fleet if args.ledger is None else replace(fleet, ledger=args.ledger)
    missing = [flag for flag in ("connection", "fleet_key") if getattr(args, flag) is None]
    if missing:
        flags = " and ".join("--" + flag.replace("_", "-") for flag in missing)
        raise DeployError(f"give -c/--server-config, or {flags}")
    return Fleet(args.connection, args.flwr_home, args.fleet_key, args.ledger)


def _server_fleet(server_yaml: Path) -> Fleet:
    """fleet-server's own: its `flwr` CLI home and connection, fleet key and ledger."""
    state = _operator(server_yaml)
    return Fleet(
        state.connection, state.flwr_home, state.fleet_key, state.ledger_dir, state.nodes_file
    )


def _names(fleet: Fleet) -> dict[int, str] | None:
    """Node id -> enrolled name, from fleet-server's records; None without them."""
    if fleet.nodes_file is None:
        return None
    from server.api import device_names

    names: dict[int, str] = _guard(lambda: device_names(fleet.nodes_file))
    return names


def _operator(server_yaml: Path) -> "OperatorState":
    """What server.yaml says of the operator's state: connection, fleet key, ledger."""
    from server.api import ConfigError, operator_state

    try:
        return operator_state(server_yaml)
    except ConfigError as error:
        raise DeployError(str(error)) from None


def _ledger(fleet: Fleet) -> "DeploymentLedger | None":
    if fleet.ledger is None:
        return None
    from server.api import DeploymentLedger

    ledger = DeploymentLedger(fleet.ledger)
    _guard(ledger.events)  # a damaged ledger stops the rollout before it starts
    return ledger


def _record(
    ledger: "DeploymentLedger | None", action: str, ticket_id: str, document: dict[str, Any]
) -> None:
    if ledger is None:
        return
    _guard(
        lambda: ledger.record(
            action,
            ticket_id,
            succeeded=bool(document["succeeded"]),
            at=datetime.now(UTC),
            counts=_counts(document),
            canary=document.get("canary"),
            nodes=document["nodes"],
            reason=str(document.get("reason") or ""),
        )
    )


def _guard(call: Any) -> Any:
    """Run a ledger call; its errors become DeployError (exit status 3, the file named)."""
    from server.api import LedgerError

    try:
        return call()
    except LedgerError as error:
        raise DeployError(str(error)) from None


def _counts(document: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in document["nodes"]:
        counts[node["status"]] = counts.get(node["status"], 0) + 1
    return counts


def _verified_id(path: Path, fleet_key: Path) -> str:
    from ticket.bundle import read_ticket  # torch: `ticket deployments` reads no ticket

    return read_ticket(path, trusted_keys=[fleet_key.read_bytes()]).content_id


def _run_dir(args: argparse.Namespace) -> Path:
    run_dir: Path = args.run_dir or Path(tempfile.mkdtemp(prefix="ticket-deploy-"))
    return run_dir.resolve()


def _resolve(source: str, registry: Path | None, run_dir: Path, fleet_key: Path) -> Path:
    path = Path(source)
    if path.exists():
        return path
    from ticket_cli.registry import TicketRegistry  # only when pulling from the registry

    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "deploy.ticket"
    with TicketRegistry(registry or _default_registry(), create=False) as store:
        store.pull(source, out, [fleet_key.read_bytes()], overwrite=True)
    return out


def _default_registry() -> Path:
    from ticket_cli.cmd_registry import default_registry

    return default_registry(os.environ, Path.home())
