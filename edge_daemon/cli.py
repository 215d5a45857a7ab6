"""`edge-daemon`: the device owner's command: run the daemon, feed it readings, check on it.

    edge-daemon run      -c daemon.yaml               train while the device is eligible
    edge-daemon ingest   -c daemon.yaml FILE.csv ...  add private readings to the local store
    edge-daemon status   -c daemon.yaml [--json]      eligibility, node, rounds, tickets, readings
    edge-daemon keygen   --out PATH [--force]         the node's key pair for the operator to enroll
    edge-daemon tickets add  -c daemon.yaml FILE      cache a ticket signed by the fleet key
    edge-daemon tickets list -c daemon.yaml           content ids of the cached tickets
    edge-daemon predict  -c daemon.yaml FILE|-|--stored  class and probability per reading
    edge-daemon schema   -c daemon.yaml [--json]      the columns readings must have
    edge-daemon personalise -c daemon.yaml [--json]   fine-tune the global model on this device

`-c` defaults to /etc/edge-daemon/daemon.yaml, the path the systemd unit uses. Exit statuses are
`edge_daemon.exit_codes.ExitCode`; `status --json` is documented in `edge_daemon.status_report`.
Expected failures print one line naming the file (and its line or key) and a hint, never a
traceback. Only `run` loads the daemon's loop. `predict` and `personalise` run the network in
numpy (ticket/numpy_mlp.py) and never load torch (tests/edge_daemon/test_personalise.py).
"""

import argparse
import json
import logging
import re
import shlex
import socket
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from edge_daemon import cmd_personalise, cmd_predict, cmd_schema
from edge_daemon.config import ConfigError, load_config
from edge_daemon.exit_codes import HELP, ExitCode, exit_code_for
from edge_daemon.keys import default_comment, write_node_key
from edge_daemon.paths import DaemonPaths
from edge_daemon.readings import SCHEMAS, IngestError, ReadingsStore, StoreError, read_csv
from edge_daemon.state import StateError
from edge_daemon.status_report import collect_status, format_status
from edge_daemon.ticket_cache import TicketCache, TicketCacheError, install_ticket
from ticket.atomic import AlreadyRunningError

DEFAULT_CONFIG = Path("/etc/edge-daemon/daemon.yaml")
# fleet-server's own default -c (server/cli.py; the device never imports the server's code)
SERVER_DEFAULT_CONFIG = "/etc/fleet-server/server.yaml"
_EXPECTED = (
    AlreadyRunningError,
    ConfigError,
    IngestError,
    StoreError,
    StateError,
    TicketCacheError,
    OSError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-daemon",
        description="Train lottery tickets on this device's private readings, only while the "
        "device can spare it.",
    )
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="daemon.yaml",
        help=f"the daemon's configuration (default: {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[config], help="run the daemon until stopped")
    run.set_defaults(handler=_run, name="run")

    ingest = commands.add_parser(
        "ingest",
        parents=[config],
        help="add readings from CSV files to the local store",
        description="Every file is checked before any is stored; each file is stored whole or "
        "not at all. A file ingested before (same bytes) adds nothing.",
    )
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE.csv")
    ingest.set_defaults(handler=_ingest, name="ingest")

    status = commands.add_parser(
        "status",
        parents=[config],
        help="show eligibility, the node, rounds joined, cached tickets and readings",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--probe", action="store_true", help="probe the device now, not the daemon's verdict"
    )
    status.add_argument(
        "--sample-s",
        type=_sample_seconds,
        default=1.0,
        metavar="S",
        help="CPU sampling time when probing (default: 1)",
    )
    status.set_defaults(handler=_status, name="status")

    keygen = commands.add_parser(
        "keygen",
        help="create the node's authentication key pair (ECDSA P-384, OpenSSH format)",
        description="Write PATH (the private key, mode 0600; daemon.yaml's server.auth_key) and "
        "PATH.pub (the public key the fleet operator enrolls).",
    )
    keygen.add_argument("--out", required=True, type=Path, metavar="PATH", help="e.g. node.key")
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair")
    keygen.add_argument(
        "--comment", type=_one_line, default=None, help="default: edge-daemon@HOSTNAME"
    )
    keygen.set_defaults(handler=_keygen, name="keygen")

    tickets = commands.add_parser("tickets", help="the verified ticket cache")
    actions = tickets.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", parents=[config], help="verify a ticket against the fleet key and cache it"
    )
    add.add_argument("file", type=Path, metavar="FILE", help="a .ticket file")
    add.set_defaults(handler=_tickets_add, name="tickets add")
    listing = actions.add_parser("list", parents=[config], help="content ids of cached tickets")
    listing.set_defaults(handler=_tickets_list, name="tickets list")
    cmd_predict.register(commands, config)
    cmd_schema.register(commands, config)
    cmd_personalise.register(commands, config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("edge-daemon: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except _EXPECTED as error:
        code = exit_code_for(error)
        print(f"edge-daemon {args.name}: error: {error}", file=sys.stderr)
        if code in HELP:
            print(f"  hint: {HELP[code]}", file=sys.stderr)
        return code


def _run(args: argparse.Namespace) -> int:
    # The key files must be there now: a daemon that starts anyway fails only in its node's log.
    config = load_config(args.config, check_files=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Imported only here: the other subcommands need none of the daemon's loop.
    from edge_daemon.daemon import run_daemon

    return run_daemon(config, config_path=args.config)


def _ingest(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    schema = SCHEMAS[config.data.schema]()
    for path in args.files:  # every file is checked before any is stored
        read_csv(path, schema, limits=config.data.csv_limits)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = ReadingsStore(
        DaemonPaths(config.state_dir).readings_db,
        schema=config.data.schema,
        retention_rows=config.data.retention_rows,
        retention_days=config.data.retention_days,
    )
    with store:
        for path in args.files:
            result = store.ingest_csv(path, limits=config.data.csv_limits)
            if result.is_duplicate:
                at = datetime.fromtimestamp(result.ingested_at).astimezone()
                print(f"{path}: duplicate of the file ingested {at:%Y-%m-%d %H:%M}, 0 rows added")
            else:
                unlabelled = f" ({result.rows_unlabelled} unlabelled: for predict only)"
                print(
                    f"{path}: {result.rows_added} rows added"
                    f"{unlabelled if result.rows_unlabelled else ''}, "
                    f"{result.rows_expired} expired by retention"
                )
        print(f"{store.count()} readings stored")
    return ExitCode.OK


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    report = collect_status(config, probe_now=args.probe, sample_s=args.sample_s)
    for warning in report.warnings:
        print(f"edge-daemon status: warning: {warning}", file=sys.stderr)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_status(report))
    return ExitCode.OK


def _keygen(args: argparse.Namespace) -> int:
    comment = default_comment() if args.comment is None else args.comment
    key = write_node_key(args.out, comment=comment, force=args.force)
    print(key.public_line)
    print(f"fingerprint  {key.fingerprint}")
    print(f"private      {key.private_path}  (keep it secret; daemon.yaml server.auth_key)")
    print(f"public       {key.public_path}")
    print(f"enroll this node: give {key.public_path.name} to the fleet operator, who runs")
    print(f"  {enroll_command(key.public_path.name, comment)}")
    return ExitCode.OK


def enroll_command(public_file: str, comment: str) -> str:
    """The `fleet-server enroll` line for a key, ready to paste: its --name is the device's
    name from the key's comment (edge-daemon@HOST -> HOST), and -c names the server's default
    config path, which the operator replaces if theirs lives elsewhere."""
    name = comment.rpartition("@")[2].strip() or socket.gethostname()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "device"
    return shlex.join(
        ["fleet-server", "enroll", public_file, "--name", name, "-c", SERVER_DEFAULT_CONFIG]
    )


def _tickets_add(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ticket_id = install_ticket(DaemonPaths(config.state_dir), config.fleet_key, args.file)
    print(f"cached {ticket_id}")
    return ExitCode.OK


def _tickets_list(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for ticket_id in TicketCache(DaemonPaths(config.state_dir).tickets_dir, config.fleet_key).ids():
        print(ticket_id)
    return ExitCode.OK


def _sample_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"expected 0 < S <= 60, got {text}")
    return value


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("must be one line")
    return text


if __name__ == "__main__":
    sys.exit(main())
