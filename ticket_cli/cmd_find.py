"""`ticket find`: search for a winning ticket and write the bundle, a JSON report and a plot."""

import argparse
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ticket.bundle import sign_ticket, write_ticket
from ticket.errors import TicketError
from ticket.lottery import SearchSpec
from ticket.prune import CONTROLS, METHODS, PruningRates
from ticket.recipes import DEFAULT_TRAINING
from ticket.train_config import OPTIMIZERS
from ticket_cli.cmd_keys import read_private_key
from ticket_cli.commands import HELP
from ticket_cli.find_report import build_level_ticket, build_report, plot_levels, write_json
from ticket_cli.find_runner import SearchRunner

SCOPES = {"layerwise": "magnitude-layerwise", "global": "magnitude-global"}


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "find",
        help=HELP["find"],
        description="Train, prune and rewind until the target density; write the ticket, "
        "a JSON report and a PNG plot (ticket vs random reinit vs random pruning). "
        "A killed search resumes from its work directory. This searches on rows held in one "
        "place: use it for public or proxy data. To find a ticket on a fleet whose data may "
        "not leave its devices, use `ticket init` and `fleet-server find`.",
    )
    parser.add_argument("--model", required=True, help="model registry name, e.g. heart-mlp")
    parser.add_argument("--data", required=True, help="dataset registry name, e.g. heart-uci")
    parser.add_argument(
        "--target-density", required=True, type=_fraction, help="fraction of weights kept, e.g. 0.1"
    )
    parser.add_argument("--out", required=True, type=Path, help="the .ticket file to write")
    parser.add_argument("--sites", type=_csv, help="only these natural sites (e.g. Cleveland)")
    parser.add_argument(
        "--train-rows",
        type=_positive_int,
        help="train on the first N training rows only (a quick search; default: all)",
    )
    parser.add_argument("--method", default="imp", choices=sorted(METHODS), help="default: imp")
    parser.add_argument(
        "--scope",
        default="layerwise",
        choices=sorted(SCOPES),
        help="magnitude ranking per layer or global",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.2,
        help="fraction of remaining weights pruned per level (0.2)",
    )
    parser.add_argument(
        "--output-rate", type=float, help="rate of the output layer (default: half of --rate)"
    )
    parser.add_argument(
        "--layer-rate",
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="per-layer rate, repeatable",
    )
    parser.add_argument(
        "--rewind-step",
        type=int,
        default=0,
        help="rewind to the weights after K iterations (0 = init)",
    )
    parser.add_argument("--epochs", type=int, help="epochs per level (default depends on --data)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--controls", type=_controls, default=CONTROLS, help="comma list of reinit,random or 'none'"
    )
    parser.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=JSON", help="e.g. hidden=[64,32]"
    )
    parser.add_argument("--workdir", type=Path, help="resumable state (default: OUT.work)")
    parser.add_argument("--report", type=Path, help="JSON report (default: OUT with .json)")
    parser.add_argument("--plot", type=Path, help="PNG plot (default: OUT with .png)")
    parser.add_argument(
        "--sign-key", type=Path, help="sign the ticket with this Ed25519 private key"
    )
    parser.add_argument("--parent", help="content id of the ticket this one derives from")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def spec_from_args(args: argparse.Namespace) -> SearchSpec:
    defaults = DEFAULT_TRAINING[args.data]
    overrides = {
        key: getattr(args, key)
        for key in ("epochs", "batch_size", "lr", "optimizer")
        if getattr(args, key) is not None
    }
    return SearchSpec(
        model=args.model,
        data=args.data,
        target_density=args.target_density,
        train=replace(defaults, **overrides),
        model_args=_key_values(args.model_arg, "--model-arg", parse=_json_value),
        sites=tuple(args.sites) if args.sites else None,
        train_rows=args.train_rows,
        method=args.method,
        pruner=SCOPES[args.scope],
        rates=PruningRates(
            rate=args.rate,
            output_rate=args.output_rate,
            layer_rates=_key_values(args.layer_rate, "--layer-rate", parse=float),
        ),
        rewind_step=args.rewind_step,
        seed=args.seed,
        controls=tuple(args.controls),
    )


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise TicketError(f"{out} already exists; pass --force to overwrite it")
    # A key that is missing or not a private key must fail now, not after hours of search.
    signing_key = read_private_key(args.sign_key) if args.sign_key else None
    spec = spec_from_args(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or out.with_name(out.name + ".work")
    outcome = SearchRunner(spec, workdir, progress=not args.quiet).run()

    ticket = build_level_ticket(outcome, created_at=datetime.now(UTC), parent=args.parent)
    if signing_key is not None:
        ticket = sign_ticket(ticket, signing_key)
    write_ticket(out, ticket)

    plot_path = args.plot or out.with_suffix(".png")
    report_path = args.report or out.with_suffix(".json")
    title = f"{spec.model} on {spec.data}: {spec.method}, rewind to step {spec.rewind_step}"
    plot_levels(plot_path, outcome.levels, title=title)
    write_json(
        report_path,
        build_report(outcome, ticket_path=out, content_id=ticket.content_id, plot_path=plot_path),
    )
    _print_summary(outcome.levels, ticket.content_id, out, report_path, plot_path)
    return 0


def _print_summary(levels: list[Any], content_id: str, out: Path, report: Path, plot: Path) -> None:
    controls = list(levels[0].controls)
    header = f"{'level':>5} {'remaining':>9} {'ticket acc':>10} {'auc':>6}" + "".join(
        f" {c + ' acc':>11}" for c in controls
    )
    print(header)
    for level in levels:
        auc = level.ticket.get("auc")
        row = f"{level.level:>5} {100 * level.density:>8.1f}% {level.ticket['accuracy']:>10.4f} "
        row += f"{auc:>6.3f}" if auc is not None else f"{'-':>6}"
        row += "".join(f" {level.controls[c]['accuracy']:>11.4f}" for c in controls)
        print(row)
    print(f"ticket  {out}  id {content_id}")
    print(f"report  {report}")
    print(f"plot    {plot}")
    sys.stdout.flush()


# ---------------------------------------------------------------- argument types


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def _csv(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _controls(text: str) -> tuple[str, ...]:
    if text == "none":
        return ()
    items = _csv(text)
    unknown = sorted(set(items) - set(CONTROLS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown control {', '.join(unknown)}; choose from {', '.join(CONTROLS)} or none"
        )
    return tuple(items)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word is a string


def _key_values(items: list[str], flag: str, *, parse: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TicketError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            parsed[key] = parse(value)
        except ValueError as error:
            raise TicketError(f"{flag} {item!r}: {error}") from error
    return parsed
