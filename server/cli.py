"""`fleet-server`: the fleet operator's command: init, run, enroll, nodes, status."""

import argparse
import dataclasses
import json
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from server.config import ConfigError, FleetConfig, load_config
from server.enrolment import (
    Enrolment,
    EnrolmentError,
    EnrolmentRecords,
    check_node_id,
    merge_nodes,
    read_node_key,
    secagg_certificate,
)
from server.errors import BadArgumentError, FleetError, NoActiveTicketError
from server.example_config import DEFAULT_STATE_DIR, ExampleConfigError, write_example_config
from server.exit_codes import HELP, ExitCode, exit_code_for
from server.fleet import (
    COMPLETED_STATUS,
    FleetServer,
    SearchJob,
    TrainingTarget,
    flower_cli,
    init_state,
    read_run_file,
    training_target,
)
from server.node_snapshot import FRESH_S, NodeSnapshot, read_snapshot
from server.round_progress import read_progress
from server.run_status import RunSummary, format_summary, read_summary
from server.search_jobs import DONE, FINISHED, SearchQueue, SearchRequest
from server.service_state import STOPPED, ServiceState, format_service, read_state
from server.superlink import SuperLinkError, is_listening
from ticket.atomic import AlreadyRunningError
from ticket.errors import TicketError
from ticket.runconfig import (
    OPTIMIZERS,
    SEARCH_METHODS,
    SEARCH_SCOPES,
    RunConfigError,
    SearchSettings,
)

DEFAULT_CONFIG = Path("/etc/fleet-server/server.yaml")
FOLLOW_POLL_S = 1.0  # how often `find` looks at a search the service runs
DRAWN_TICKET = "dense.ticket"  # --fit-encoding: where in the run directory the search draws it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-server",
        description="Run the aggregation server of a ticketfleet fleet: a Flower SuperLink with "
        "TLS and node authentication, and the training run of a signed ticket.",
    )
    # dest "command", not "name": enroll's --name would overwrite it in the error lines.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    init.add_argument(
        "--write-config",
        type=Path,
        metavar="PATH",
        help="instead: write the annotated example server.yaml to PATH (never over an "
        "existing file), to edit and pass with -c",
    )
    init.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"with --write-config: the state_dir it names (default: {DEFAULT_STATE_DIR})",
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
    find = command(
        "find",
        "find a winning ticket on the fleet itself",
        "Start the SuperLink and search the fleet for a ticket inside TICKET (a dense ticket "
        "from `ticket init`, signed by the fleet key), or with --fit-encoding inside one the "
        "search draws after fitting the encoding of readings on the devices' securely summed "
        "counts: the devices train or score it on their own data under the run: section's "
        "schedule and secure aggregation, and the server prunes the aggregate. Writes the "
        "found ticket to --out, signed with the fleet's signing key when this server holds "
        "it. Run it again after a kill: it resumes.",
    )
    find.add_argument(
        "searched",
        type=Path,
        nargs="?",
        metavar="TICKET",
        help="the dense ticket to search in (or --fit-encoding)",
    )
    find.add_argument(
        "--fit-encoding",
        action="store_true",
        help="no TICKET: fit the encoding of readings on the fleet's securely summed counts, "
        "then draw the dense --model at W_0 from run.seed and search in it",
    )
    find.add_argument("--model", help="--fit-encoding: the model registry name, e.g. heart-mlp")
    find.add_argument("--out", required=True, type=Path, help="the .ticket file to write")
    find.add_argument(
        "--method",
        default=SearchSettings.search_method,
        choices=SEARCH_METHODS,
        help=f"default: {SearchSettings.search_method}",
    )
    find.add_argument(
        "--target-density",
        type=float,
        default=SearchSettings.search_target_density,
        help=f"fraction of the weights kept (default: {SearchSettings.search_target_density})",
    )
    find.add_argument(
        "--rounds-per-level",
        type=int,
        default=SearchSettings.search_rounds_per_level,
        help="federated rounds per pruning level (fed-oneshot: dense rounds; "
        f"fed-early-bird: at most; default {SearchSettings.search_rounds_per_level})",
    )
    find.add_argument(
        "--rate",
        type=float,
        default=SearchSettings.search_rate,
        help=f"fed-imp: fraction pruned per level (default {SearchSettings.search_rate})",
    )
    find.add_argument(
        "--scope",
        choices=SEARCH_SCOPES,
        default=SearchSettings.search_scope,
        help=f"magnitude ranking (default {SearchSettings.search_scope})",
    )
    find.add_argument(
        "--rewind-round",
        type=int,
        default=SearchSettings.search_rewind_round,
        help="rewind the survivors to the weights after this many dense rounds (default 0: W_0)",
    )
    find.add_argument(
        "--early-bird-distance",
        type=float,
        default=SearchSettings.search_early_bird_distance,
        help="fed-early-bird: the mask distance at which a level stops "
        f"(default {SearchSettings.search_early_bird_distance})",
    )
    find.add_argument(
        "--synflow-iterations",
        type=int,
        default=SearchSettings.search_synflow_iterations,
        help=f"synflow: pruning iterations (default {SearchSettings.search_synflow_iterations})",
    )
    schedule = find.add_argument_group(
        "the search rounds' local schedule",
        "Each replaces its run: section key for the search only (default: the run's). On "
        "the four heart hospitals, one full-batch gradient step a round (FedSGD: --optimizer "
        "sgd --lr 1 --local-epochs 1 --batch-size N, N above any device's readings, with "
        "--rounds-per-level 20) found tickets as good as pooled rows did, where local Adam "
        "epochs fell 3-5 pp short; see docs/fleet-search.md for where it did not help.",
    )
    schedule.add_argument("--local-epochs", type=int, default=0, help="each device's epochs")
    schedule.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="local batch size (above a device's rows: one full-batch step an epoch)",
    )
    schedule.add_argument("--lr", type=float, default=0.0, help="local learning rate")
    schedule.add_argument("--optimizer", choices=OPTIMIZERS, default="", help="local optimizer")
    find.add_argument(
        "--name",
        dest="run_name",
        help="the search's run directory name (default: find-<--out's stem>)",
    )
    find.add_argument(
        "--plaintext",
        action="store_true",
        help="let the server see each device's update (default: secure aggregation, whatever "
        "run.secagg says)",
    )
    find.add_argument("--force", action="store_true", help="overwrite an existing --out")
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
    nodes.add_argument(
        "--live",
        action="store_true",
        help="ask the SuperLink now (default: the running service's list, if under "
        f"{FRESH_S:.0f} s old; asking takes seconds)",
    )
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
        (find, run_find),
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


def write_config(args: argparse.Namespace) -> int:
    """`init --write-config PATH`: the example server.yaml, for an operator who has none."""
    path = write_example_config(args.write_config, args.state_dir)
    load_config(path)  # what is written is a config `init -c PATH` accepts
    print(f"wrote    {path}: edit it (the run: section names the ticket to train), then")
    print(f"  fleet-server init -c {path}")
    return ExitCode.OK


def run_run(args: argparse.Namespace, config: FleetConfig) -> int:
    # SIGTERM (systemd, `kill`) unwinds like Ctrl-C: everything `run` started gets stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    fleet = FleetServer(config)
    metrics = None
    if args.metrics_port is not None:
        from server.metrics import serve_metrics

        def scrape() -> RunSummary:
            service = read_state(config.paths.service_file)
            return _summary(config, _target(config, service), service)

        metrics = serve_metrics(
            scrape,
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


def run_find(args: argparse.Namespace, config: FleetConfig) -> int:
    out: Path = args.out.absolute()
    if out.exists() and not args.force:
        raise BadArgumentError(f"{out} already exists; pass --force to overwrite it")
    _check_fit_encoding(args, config)
    name = args.run_name or f"find-{out.stem}"
    run_dir = config.paths.run_dir(name)
    fit: dict[str, Any] = {}
    if args.fit_encoding:  # the search draws the dense ticket; the devices install it signed
        key = config.fleet_private_key
        fit = {
            "search_fit_encoding": True,
            "search_model": args.model,
            "search_sign_key": key.absolute() if key.is_file() else None,
        }
    searched = run_dir / DRAWN_TICKET if args.fit_encoding else args.searched.absolute()
    try:
        settings = SearchSettings(
            search_method=args.method,
            search_target_density=args.target_density,
            search_rounds_per_level=args.rounds_per_level,
            search_rate=args.rate,
            search_scope=args.scope,
            search_rewind_round=args.rewind_round,
            search_early_bird_distance=args.early_bird_distance,
            search_synflow_iterations=args.synflow_iterations,
            search_local_epochs=args.local_epochs,
            search_batch_size=args.batch_size,
            search_lr=args.lr,
            search_optimizer=args.optimizer,
            search_out=out,
            **fit,
        )
    except RunConfigError as error:  # names the run-config key; say the option instead
        raise BadArgumentError(_as_option(str(error))) from None
    if settings.search_rewind_round > settings.search_rounds_per_level:
        raise BadArgumentError("--rewind-round must be at most --rounds-per-level")
    job = SearchJob(searched, run_dir, out, settings, args.plaintext)
    signal.signal(signal.SIGTERM, _interrupt)
    service = read_state(config.paths.service_file)
    if service is not None and service.alive and service.phase != STOPPED:
        status = _find_through_service(config, job, name, service)
    else:
        status = FleetServer(config).find(job)
    if status != COMPLETED_STATUS or not out.is_file():
        print(
            f"fleet-server find: the search did not finish ({status}); see {config.paths.logs_dir}",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    from ticket.bundle import read_ticket, sign_ticket, write_ticket  # torch: only when needed

    ticket = read_ticket(out, allow_unsigned=True)
    key = config.fleet_private_key
    if key.is_file():
        write_ticket(out, sign_ticket(ticket, key.read_bytes()))
        signed = f"signed with {key}"
    else:
        signed = f"unsigned: sign it with `ticket sign {out} --key FLEET.key`"
    fleet = ticket.manifest.fleet
    print(
        f"found ticket {ticket.content_id[:12]} at density "
        f"{ticket.manifest.density.overall:.4f} ({signed})"
    )
    if fleet is not None:
        print(
            f"  on {fleet.devices} devices: {fleet.levels} level(s), {fleet.rounds} rounds, "
            f"{fleet.bytes_up:,} bytes up, {fleet.bytes_down:,} bytes down"
            + ("" if fleet.dp_epsilon is None else f", epsilon {fleet.dp_epsilon:.2f}")
        )
    return ExitCode.OK


def _check_fit_encoding(args: argparse.Namespace, config: FleetConfig) -> None:
    """Exactly one of TICKET and --fit-encoding, --model with the latter only, and a fit the
    fleet can run: under secure aggregation, without DP (not built for the counts)."""
    if args.fit_encoding == (args.searched is not None):
        raise BadArgumentError("give TICKET (a dense ticket to search in) or --fit-encoding")
    if not args.fit_encoding:
        if args.model is not None:
            raise BadArgumentError("--model goes with --fit-encoding (TICKET names its model)")
        return
    if not args.model:
        raise BadArgumentError("--fit-encoding needs --model, e.g. --model heart-mlp")
    if args.plaintext:
        raise BadArgumentError("--fit-encoding runs under secure aggregation only: no --plaintext")
    if config.run.dp_noise_multiplier > 0:
        raise BadArgumentError(
            "--fit-encoding: DP noise on the encoding's counts is not built; fit without "
            "run.dp_noise_multiplier, or give TICKET"
        )


def _find_through_service(
    config: FleetConfig, job: SearchJob, name: str, service: ServiceState
) -> str:
    """The running service holds the SuperLink: queue the search for it, follow the job, and
    return the search's status as `FleetServer.find` would."""
    if not job.ticket.is_file():
        raise BadArgumentError(f"{job.ticket}: no such ticket to search in")
    queue = SearchQueue(config.paths.jobs_dir)
    status = queue.status(name)
    if status is None or status.state in FINISHED:
        queue.submit(SearchRequest(name, job.ticket, job.out, job.settings, job.plaintext))
        print(
            f"queued fleet search {name} for the running service (pid {service.pid}): it starts "
            "once the round in progress is done",
            flush=True,
        )
    said: tuple[str, str] | None = None
    try:
        while True:
            status = queue.status(name)
            if status is not None and (status.state, status.detail) != said:
                said = (status.state, status.detail)
                print(f"search {name}: {status.state}: {status.detail}", flush=True)
            if status is not None and status.state in FINISHED:
                return COMPLETED_STATUS if status.state == DONE else status.detail
            current = read_state(config.paths.service_file)
            if current is None or not current.alive or current.phase == STOPPED:
                raise FleetError(
                    f"fleet-server run stopped before search {name} finished; start it again "
                    "and it resumes the search, then run this command again to follow it"
                )
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        print(
            f"search {name} goes on in the service; run the same command again to follow it",
            file=sys.stderr,
        )
        raise


def _as_option(message: str) -> str:
    """A run-config key's error as the option that set it: `search-rate` -> `--rate`."""
    return re.sub(r"\bsearch-([a-z-]+)", r"--\1", message.replace("run config: ", ""))


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
    node_id = check_node_id(
        flower_cli(config).register_node(args.key, name=args.name), "flwr supernode register"
    )
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
    snapshot = None if args.live else _fresh_snapshot(config)
    if snapshot is not None:
        listed: list[dict[str, Any]] | None = snapshot.nodes
    else:
        listed = flower_cli(config).list_nodes() if _superlink_up(config) else None
    as_of = None if snapshot is None else snapshot.at.isoformat(timespec="seconds")
    rows = merge_nodes(records, listed)
    if args.json:
        document = {"superlink_running": listed is not None, "as_of": as_of, "nodes": rows}
        print(json.dumps(document, indent=2))
        return ExitCode.OK
    if listed is None:
        print("the SuperLink is not running: online state unknown", file=sys.stderr)
    if snapshot is not None:
        print(
            f"online state as of {as_of} ({snapshot.age_s():.0f} s ago, listed by the running "
            "service); --live asks the SuperLink now",
            file=sys.stderr,
        )
    print(f"{'name':<16} {'node id':>20} {'status':<10} {'last seen':<25} fingerprint")
    for row in rows:
        print(
            f"{row['name'] or '-':<16} {row['node_id']:>20} {row['status']:<10} "
            f"{row['last_seen'] or '-':<25} {row['fingerprint'] or '-'}"
        )
    return ExitCode.OK


def _fresh_snapshot(config: FleetConfig) -> NodeSnapshot | None:
    """The running service's node list, if it is fresh."""
    service = read_state(config.paths.service_file)
    if service is None or not service.alive or service.phase == STOPPED:
        return None
    snapshot = read_snapshot(config.paths.nodes_snapshot)
    return snapshot if snapshot is not None and snapshot.age_s() <= FRESH_S else None


def run_status(args: argparse.Namespace, config: FleetConfig) -> int:
    service = read_state(config.paths.service_file)
    active = _target(config, service)
    summary = _summary(config, active, service)
    progress = None  # the round in flight, while the service trains
    if service is not None and service.alive and service.run_dir and service.phase != STOPPED:
        progress = read_progress(Path(service.run_dir))
    if args.json:
        document = summary.as_dict()
        if config.run.ticket is None:
            document["active_ticket"] = None if active is None else active.ticket_id
        document["service"] = (
            None if service is None else {**service.as_dict(), "alive": service.alive}
        )
        document["round_in_progress"] = None if progress is None else dataclasses.asdict(progress)
        print(json.dumps(document, indent=2))
        return ExitCode.OK
    print("\n".join(format_service(service)))
    if progress is not None:
        print(f"  {progress.describe()}")
    if config.run.ticket is None:
        print(
            f"active ticket: {active.ticket_id}"
            if active is not None and active.ticket_id is not None
            else "active ticket: none yet (roll one out with `ticket deploy FILE -c server.yaml`)"
        )
    print(format_summary(summary))
    return ExitCode.OK


def _target(config: FleetConfig, service: ServiceState | None = None) -> TrainingTarget | None:
    """The run to report: the one the running service trains, else what `run` would train;
    None while server.yaml names no ticket and none is active yet."""
    if service is not None and service.alive and service.run_dir is not None:
        return TrainingTarget(Path(), Path(service.run_dir), service.ticket)
    try:
        return training_target(config)
    except NoActiveTicketError:
        return None


def _summary(
    config: FleetConfig, target: TrainingTarget | None, service: ServiceState | None
) -> RunSummary:
    """The run of `target` (`_target(config)`): its rounds so far, and, while the service
    runs, its Flower run and state as the service last saw them (no SuperLink query: that
    would take the seconds the `flwr` CLI takes to start)."""
    live = service is not None and service.alive
    run = read_run_file(config.paths.run_file)
    run_id = run.get("run_id") if isinstance(run.get("run_id"), int) else None
    if live and service is not None and service.run_id is not None:
        run_id = service.run_id
    planned = config.run.num_rounds
    if live and service is not None and service.rounds_planned is not None:
        planned = service.rounds_planned
    return read_summary(
        config.run_dir() if target is None else target.run_dir,
        rounds_planned=planned,
        run_id=run_id,
        run_status=service.run_status if live and service is not None else None,
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
    ExampleConfigError,
    OSError,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "state_dir", None) is not None and args.write_config is None:
        parser.error("--state-dir goes with --write-config")
    try:
        if getattr(args, "write_config", None) is not None:
            return write_config(args)
        config = load_config(args.config)
        return int(args.handler(args, config))
    except KeyboardInterrupt:
        print(f"fleet-server {args.command}: interrupted; stopped what it started", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except _EXPECTED as error:
        code = exit_code_for(error)
        print(f"fleet-server {args.command}: error: {error}", file=sys.stderr)
        if code in HELP:
            print(f"  hint: {HELP[code]}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
