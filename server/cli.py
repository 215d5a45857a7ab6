"""`fleet-server`: the fleet operator's command: init, run, enroll, nodes, status."""

import argparse
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from server.config import ConfigError, FleetConfig, load_config
from server.enrolment import (
    Enrolment,
    EnrolmentError,
    EnrolmentRecords,
    merge_nodes,
    read_node_key,
    secagg_certificate,
)
from server.exit_codes import HELP, ExitCode, exit_code_for
from server.fleet import (
    COMPLETED_STATUS,
    FleetError,
    FleetServer,
    NoActiveTicketError,
    TrainingTarget,
    flower_cli,
    init_state,
    read_run_file,
    training_target,
)
from server.run_status import RunSummary, format_summary, read_summary
from server.superlink import SuperLinkError, is_listening
from ticket.atomic import AlreadyRunningError
from ticket.errors import TicketError

DEFAULT_CONFIG = Path("/etc/fleet-server/server.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-server",
        description="Run the aggregation server of a ticketfleet fleet: a Flower SuperLink with "
        "TLS and node authentication, and the training run of a signed ticket.",
    )
    commands = parser.add_subparsers(dest="name", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=description)
        sub.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"server.yaml (default: {DEFAULT_CONFIG})",
        )
        return sub

    init = command(
        "init",
        "create the state directory, TLS certificates and the fleet signing key",
        "Create state_dir (mode 0700), a development CA and server certificate (unless tls: "
        "names your own) and the fleet's Ed25519 signing key pair (unless fleet_key: names "
        "your own). Safe to run again: nothing that exists is overwritten.",
    )
    init.add_argument(
        "--hosts",
        help="comma-separated names/addresses the server certificate covers "
        "(default: tls.hosts from server.yaml)",
    )
    run = command(
        "run",
        "start the SuperLink and run (or resume) the training run",
        "Start the SuperLink and submit the training run of server.yaml; follow it until it "
        "is finished. Run it again after a crash or kill: it resumes from the last "
        "checkpointed round. SIGTERM or Ctrl-C stops everything it started.",
    )
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    run.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for the metrics (default: 127.0.0.1)"
    )
    enroll = command(
        "enroll",
        "let a device's node join the fleet",
        "Register a node's public key (KEY.pub from `edge-daemon keygen` on the device) with "
        "the running SuperLink, and record it under NAME.",
    )
    enroll.add_argument("key", type=Path, metavar="NODE.pub")
    enroll.add_argument("--name", required=True, help="a name for the device, unique in the fleet")
    nodes = command(
        "nodes",
        "list enrolled nodes, online or not",
        "Enrolled nodes and their state on the running SuperLink: online, offline, last seen.",
    )
    nodes.add_argument("--json", action="store_true", help="print JSON")
    status = command(
        "status",
        "show the training run's progress",
        "The current run, its "
        "rounds, participants, dropouts, accuracy and bytes, from the run log.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    for sub, handler in (
        (init, run_init),
        (run, run_run),
        (enroll, run_enroll),
        (nodes, run_nodes),
        (status, run_status),
    ):
        sub.set_defaults(handler=handler)
    return parser


def run_init(args: argparse.Namespace, config: FleetConfig) -> int:
    hosts = [host.strip() for host in args.hosts.split(",") if host.strip()] if args.hosts else None
    report = init_state(config, hosts)
    for path in report.created:
        print(f"created  {path}")
    for path in report.kept:
        print(f"kept     {path}")
    print(f"fleet key {config.fleet_public_key}: give it to every device (daemon.yaml fleet_key)")
    print(f"CA        {config.tls_files.ca_cert}: devices trust it (server.root_certificates)")
    return ExitCode.OK


def run_run(args: argparse.Namespace, config: FleetConfig) -> int:
    # SIGTERM (systemd, `kill`) unwinds like Ctrl-C: everything `run` started gets stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    fleet = FleetServer(config)
    metrics = None
    if args.metrics_port is not None:
        from server.metrics import serve_metrics

        metrics = serve_metrics(
            lambda: _summary(config, _target(config)),
            port=args.metrics_port,
            host=args.metrics_host,
        )
        print(f"metrics on http://{args.metrics_host}:{metrics.server_port}/metrics", flush=True)
    try:
        status = fleet.run()
    finally:
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
    return ExitCode.OK if status == COMPLETED_STATUS else ExitCode.FAILURE


def run_enroll(args: argparse.Namespace, config: FleetConfig) -> int:
    line, fingerprint = read_node_key(args.key)
    records = EnrolmentRecords(config.paths.nodes_file)
    if (same := records.find(fingerprint=fingerprint)) is not None:
        print(f"{fingerprint} is already enrolled as {same.name} (node {same.node_id})")
        if not same.secagg_certificate and (signing_key := _fleet_signing_key(config)):
            # Enrolled before certificates existed (or while the key was away): certify now.
            certificate = secagg_certificate(signing_key, same.node_id, same.public_key)
            records.add(dataclasses.replace(same, secagg_certificate=certificate))
            _report_certificate(same.node_id, certificate)
        return ExitCode.OK
    if records.find(name=args.name) is not None:
        raise EnrolmentError(f"--name {args.name}: another node is enrolled under this name")
    _require_superlink(config)
    signing_key = _fleet_signing_key(config)
    node_id = flower_cli(config).register_node(args.key, name=args.name)
    enrolled_at = datetime.now(UTC).isoformat(timespec="seconds")
    certificate = "" if signing_key is None else secagg_certificate(signing_key, node_id, line)
    records.add(Enrolment(node_id, args.name, fingerprint, line, enrolled_at, certificate))
    print(f"enrolled {args.name}: node {node_id}, key {fingerprint}")
    _report_certificate(node_id, certificate)
    return ExitCode.OK


def _fleet_signing_key(config: FleetConfig) -> bytes | None:
    """The fleet key's private half, to certify node keys; None (with a warning) if absent."""
    path = config.fleet_private_key
    try:
        return path.read_bytes()
    except OSError as error:
        print(
            f"warning: cannot read the fleet signing key {path} ({error.strerror}): the node "
            "gets no secure-aggregation certificate; run `fleet-server enroll` again where "
            "the key is",
            file=sys.stderr,
        )
        return None


def _report_certificate(node_id: int, certificate: str) -> None:
    if certificate:
        print(f"certified node {node_id}'s key as its secure-aggregation identity (fleet key)")
    else:
        print(
            f"warning: node {node_id} has no secure-aggregation certificate (a P-384 key and "
            "the fleet signing key are needed): it cannot join secure rounds",
            file=sys.stderr,
        )


def run_nodes(args: argparse.Namespace, config: FleetConfig) -> int:
    records = EnrolmentRecords(config.paths.nodes_file).read()
    listed = flower_cli(config).list_nodes() if _superlink_up(config) else None
    rows = merge_nodes(records, listed)
    if args.json:
        print(json.dumps({"superlink_running": listed is not None, "nodes": rows}, indent=2))
        return ExitCode.OK
    if listed is None:
        print("the SuperLink is not running: online state unknown", file=sys.stderr)
    print(f"{'name':<16} {'node id':>20} {'status':<10} {'last seen':<25} fingerprint")
    for row in rows:
        print(
            f"{row['name'] or '-':<16} {row['node_id']:>20} {row['status']:<10} "
            f"{row['last_seen'] or '-':<25} {row['fingerprint'] or '-'}"
        )
    return ExitCode.OK


def run_status(args: argparse.Namespace, config: FleetConfig) -> int:
    active = _target(config)
    summary = _summary(config, active)
    if args.json:
        document = summary.as_dict()
        if config.run.ticket is None:
            document["active_ticket"] = None if active is None else active.ticket_id
        print(json.dumps(document, indent=2))
        return ExitCode.OK
    if config.run.ticket is None:
        print(
            f"active ticket: {active.ticket_id}"
            if active is not None and active.ticket_id is not None
            else "active ticket: none yet (roll one out with `ticket deploy FILE -c server.yaml`)"
        )
    print(format_summary(summary))
    return ExitCode.OK


def _target(config: FleetConfig) -> TrainingTarget | None:
    """What `run` trains; None while server.yaml names no ticket and none is active yet."""
    try:
        return training_target(config)
    except NoActiveTicketError:
        return None


def _summary(config: FleetConfig, target: TrainingTarget | None) -> RunSummary:
    """The run of `target` (`_target(config)`): its rounds so far, and its state if the
    SuperLink is up."""
    run = read_run_file(config.paths.run_file)
    run_id = run.get("run_id") if isinstance(run.get("run_id"), int) else None
    status = None
    if run_id is not None and _superlink_up(config):
        try:
            status = flower_cli(config).run_status(run_id)
        except SuperLinkError:
            status = None
    return read_summary(
        config.run_dir() if target is None else target.run_dir,
        rounds_planned=config.run.num_rounds,
        run_id=run_id,
        run_status=status,
    )


def _superlink_up(config: FleetConfig) -> bool:
    return (config.paths.cli_home / "config.toml").exists() and is_listening(
        config.connect_host, config.listen.port
    )


def _require_superlink(config: FleetConfig) -> None:
    if not _superlink_up(config):
        raise FleetError(
            f"no SuperLink answers on {config.connect_address}; start `fleet-server run` first"
        )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


_EXPECTED = (
    AlreadyRunningError,
    ConfigError,
    EnrolmentError,
    FleetError,
    SuperLinkError,
    TicketError,
    OSError,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        return int(args.handler(args, config))
    except KeyboardInterrupt:
        print(f"fleet-server {args.name}: interrupted; stopped what it started", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except _EXPECTED as error:
        code = exit_code_for(error)
        print(f"fleet-server {args.name}: error: {error}", file=sys.stderr)
        if code in HELP:
            print(f"  hint: {HELP[code]}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
