"""`ticket publish`, `list`, `show`, `pull`: the registry of winning tickets from the shell."""

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ticket.errors import TicketError

# Shared with `ticket inspect` so both commands show values the same way.
from ticket_cli.cmd_inspect import inline_values, number_text, percent_text, printable
from ticket_cli.cmd_keys import read_public_key
from ticket_cli.cmd_remote import (
    add_hub_options,
    run_publish_to_hub,
    run_pull_from_hub,
    search_hub,
)
from ticket_cli.commands import HELP
from ticket_cli.registry import ORDERS, TRUSTED_DIR, Entry, Outcome, TicketRegistry

LIST_SCHEMA = "ticketfleet.registry.list.v1"  # docs/ticket-format.md; bump on a breaking change
SEARCH_SCHEMA = "ticketfleet.hub.search.v1"  # docs/hub.md: the hub's answer, locally too
SHOW_SCHEMA = "ticketfleet.registry.show.v1"
REGISTRY_ENV = "TICKETFLEET_REGISTRY"

_REGISTRY_HELP = (
    f"the registry directory (default: ${REGISTRY_ENV}, else "
    "$XDG_DATA_HOME/ticketfleet/registry, else ~/.local/share/ticketfleet/registry)"
)
_KEY_HELP = (
    "a trusted public .pub key (the fleet's); repeat to trust several. Optional when the "
    f"registry's {TRUSTED_DIR}/ directory holds .pub files, which are always trusted"
)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    publish = subparsers.add_parser(
        "publish",
        help=HELP["publish"],
        description="Verify FILE against the trusted keys (unsigned, modified or untrusted "
        "tickets are refused), store it under its content id and index what it is good "
        "for. Publishing a ticket that is already there changes nothing.",
    )
    publish.add_argument("file", type=Path, metavar="FILE", help="the signed .ticket file")
    _add_common(publish, keys=True)
    add_hub_options(publish, publish=True)
    publish.set_defaults(handler=run_publish)

    listing = subparsers.add_parser(
        "list",
        help=HELP["list"],
        description="List the registry's tickets that match every filter given.",
    )
    listing.add_argument("--task", help="the dataset the ticket was found on, e.g. heart-uci")
    listing.add_argument("--model", help="model registry name, e.g. heart-mlp")
    listing.add_argument(
        "--max-density", type=_unit_fraction, metavar="D", help="at most this fraction kept"
    )
    listing.add_argument(
        "--min-accuracy",
        type=_unit_fraction,
        metavar="A",
        help="final test accuracy at least A (tickets without one are left out)",
    )
    listing.add_argument(
        "--sort", default="created", choices=list(ORDERS), help="order (default: created)"
    )
    listing.add_argument("--json", action="store_true", help=f"print JSON (schema {LIST_SCHEMA})")
    _add_common(listing, keys=False)
    listing.set_defaults(handler=run_list)

    show = subparsers.add_parser(
        "show",
        help=HELP["show"],
        description="Show the registry's entry for ID: its content id or a prefix of at least "
        "8 hex characters that names exactly one ticket.",
    )
    show.add_argument("id", metavar="ID", help="content id or unique prefix")
    show.add_argument("--json", action="store_true", help=f"print JSON (schema {SHOW_SCHEMA})")
    _add_common(show, keys=False)
    show.set_defaults(handler=run_show)

    pull = subparsers.add_parser(
        "pull",
        help=HELP["pull"],
        description="Write ticket ID (content id or unique prefix) to FILE, byte for byte as "
        "published, after checking that the stored bytes are the ones published and that a "
        "trusted key signed them. Nothing is written when a check fails.",
    )
    pull.add_argument("id", metavar="ID", help="content id or unique prefix")
    pull.add_argument("--out", required=True, type=Path, metavar="FILE", help="where to write it")
    pull.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    _add_common(pull, keys=True)
    add_hub_options(pull, publish=False)
    pull.add_argument(
        "--no-card", action="store_true", help="with --hub: do not fetch the ticket's card"
    )
    pull.set_defaults(handler=run_pull)

    search = subparsers.add_parser(
        "search",
        help=HELP["search"],
        description="List the tickets that match every filter given: from the hub at --hub "
        "(GET /api/v1/tickets, docs/hub.md; at most its first 1000) or, without --hub, from "
        "the local registry.",
    )
    search.add_argument("--dataset", "--task", dest="dataset", help="e.g. heart-uci")
    search.add_argument("--model", help="model registry name, e.g. heart-mlp")
    for bound in ("min", "max"):
        search.add_argument(
            f"--{bound}-density", type=_unit_fraction, metavar="D", help=f"{bound}imum kept"
        )
    search.add_argument(
        "--min-accuracy", type=_unit_fraction, metavar="A", help="final test accuracy >= A"
    )
    search.add_argument("--signer", metavar="KEY_ID", help="verified by this key id")
    search.add_argument("--parent", metavar="ID", help="derived from this ticket (content id)")
    search.add_argument("--json", action="store_true", help=f"print JSON ({SEARCH_SCHEMA})")
    _add_common(search, keys=False)
    add_hub_options(search, publish=False)
    search.set_defaults(handler=run_search)


def _add_common(parser: argparse.ArgumentParser, *, keys: bool) -> None:
    parser.add_argument("--registry", type=Path, metavar="DIR", help=_REGISTRY_HELP)
    if keys:
        parser.add_argument(
            "--key", action="append", default=[], type=Path, metavar="PUB", help=_KEY_HELP
        )


# ---------------------------------------------------------------- handlers


def run_publish(args: argparse.Namespace) -> int:
    if _is_hub(args):
        return run_publish_to_hub(args, args.hub)
    keys = [read_public_key(path) for path in args.key]
    with _open(args, create=True) as registry:
        published = registry.publish(args.file, keys)
    entry = published.entry
    if published.outcome is Outcome.UNCHANGED:
        print(f"already published {entry.content_id}; the registry is unchanged")
        return 0
    if published.outcome is Outcome.REPAIRED:
        print(f"republished {entry.content_id}; its damaged stored copy was replaced")
    else:
        print(f"published {entry.content_id}")
    print(
        printable(
            f"  {entry.model} on {entry.task}, density {percent_text(entry.density)}, "
            f"accuracy {number_text(entry.accuracy)}, signed by {', '.join(entry.verified_by)}"
        )
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    with _open(args, create=False) as registry:
        entries = registry.list(
            task=args.task,
            model=args.model,
            max_density=args.max_density,
            min_accuracy=args.min_accuracy,
            order_by=args.sort,
        )
    if args.json:
        document = {"schema": LIST_SCHEMA, "tickets": [entry.as_dict() for entry in entries]}
        print(json.dumps(document, indent=2, sort_keys=True))
    elif not entries:
        print("no tickets match")
    else:
        print("\n".join(printable(line) for line in list_lines(entries)))
    return 0


def run_show(args: argparse.Namespace) -> int:
    with _open(args, create=False) as registry:
        entry = registry.show(args.id)
        blob = registry.blob_path(entry.content_id)
    if args.json:
        document = {"schema": SHOW_SCHEMA, "ticket": entry.as_dict()}
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        print("\n".join(printable(line) for line in show_lines(entry, blob)))
    return 0


def run_pull(args: argparse.Namespace) -> int:
    if _is_hub(args):
        return run_pull_from_hub(args, args.hub)
    keys = [read_public_key(path) for path in args.key]
    with _open(args, create=False) as registry:
        entry = registry.pull(args.id, args.out, keys, overwrite=args.force)
    print(f"pulled {entry.content_id}")
    print(f"wrote  {args.out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    if _is_hub(args):
        entries = search_hub(args, args.hub)
    else:
        with _open(args, create=False) as registry:
            entries = registry.list(
                task=args.dataset,
                model=args.model,
                min_density=args.min_density,
                max_density=args.max_density,
                min_accuracy=args.min_accuracy,
                signer=args.signer,
                parent=args.parent,
            )
    if args.json:
        document = {"schema": SEARCH_SCHEMA, "tickets": [entry.as_dict() for entry in entries]}
        print(json.dumps(document, indent=2, sort_keys=True))
    elif not entries:
        print("no tickets match")
    else:
        print("\n".join(printable(line) for line in list_lines(entries)))
    return 0


def default_registry(environ: Mapping[str, str], home: Path) -> Path:
    """$TICKETFLEET_REGISTRY, else the XDG data directory's ticketfleet/registry."""
    if environ.get(REGISTRY_ENV):
        return Path(environ[REGISTRY_ENV])
    data_home = environ.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(data_home) / "ticketfleet" / "registry"


def _is_hub(args: argparse.Namespace) -> bool:
    """Whether the command goes to a hub (--hub) rather than the local registry."""
    if args.hub is not None and args.registry is not None:
        raise TicketError("--hub and --registry exclude each other: a hub or a local registry")
    return args.hub is not None


def _open(args: argparse.Namespace, *, create: bool) -> TicketRegistry:
    root = args.registry or default_registry(os.environ, Path.home())
    return TicketRegistry(root, create=create)


# ---------------------------------------------------------------- text


def list_lines(entries: list[Entry]) -> list[str]:
    """One row per ticket: short id, model, task, density, final metrics, created, signer."""
    rows = [
        [
            entry.short_id,
            entry.model,
            entry.task,
            percent_text(entry.density),
            number_text(entry.accuracy),
            number_text(entry.auc),
            _minutes(entry.created_at),
            ", ".join(entry.verified_by) or "-",
        ]
        for entry in entries
    ]
    headers = ["id", "model", "task", "density", "accuracy", "auc", "created", "signer"]
    return _table(headers, rows, right_aligned={3, 4, 5})


def show_lines(entry: Entry, blob: Path) -> list[str]:
    kept = f"({entry.kept_weights:,} of {entry.total_weights:,} prunable weights kept)"
    sites = inline_values({"sites": entry.sites}) if entry.sites is not None else ""
    return [
        f"ticket     {entry.content_id}",
        f"model      {entry.model}  {inline_values(entry.model_args)}".rstrip(),
        f"task       {entry.task}  {sites}".rstrip(),
        f"density    {percent_text(entry.density)}  {kept}",
        f"metrics    {_metrics(entry.metrics)}",
        f"method     {entry.method}, rewind step {entry.rewind_step}",
        f"parent     {entry.parent or 'none'}",
        f"created    {entry.created_at}",
        *_signer_lines(entry),
        f"published  {entry.published_at}",
        f"size       {entry.size_bytes:,} bytes  sha256 {entry.blob_sha256}",
        f"stored at  {blob}",
    ]


def _signer_lines(entry: Entry) -> list[str]:
    if not entry.signers:
        return ["signed by  nobody"]
    return [
        f"signed by  {key_id} "
        + ("(verified at publish)" if key_id in entry.verified_by else "(not a trusted key)")
        for key_id in entry.signers
    ]


def _table(headers: list[str], rows: list[list[str]], *, right_aligned: set[int]) -> list[str]:
    """Columns padded to width; the numeric ones right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if index in right_aligned else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _metrics(metrics: Mapping[str, Any]) -> str:
    shown = " ".join(f"{key}={number_text(value)}" for key, value in sorted(metrics.items()))
    return shown or "none"


def _minutes(timestamp: str) -> str:
    """A list needs no seconds: 2025-01-31T12:00:00Z -> 2025-01-31 12:00."""
    return timestamp[:16].replace("T", " ")


def _unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value
