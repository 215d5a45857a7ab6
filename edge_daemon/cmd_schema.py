"""`edge-daemon schema`: the readings the active ticket's task expects, and which is the label.

    edge-daemon schema -c daemon.yaml [--json]

Read from the readings schema daemon.yaml names (the one `ingest` checks and the ClientApp
encodes), so it loads neither torch nor the ticket: only the active ticket's id is looked up.
"""

import argparse
import json
import sys
from typing import Any

from edge_daemon.config import load_config
from edge_daemon.exit_codes import ExitCode
from edge_daemon.paths import DaemonPaths
from edge_daemon.readings import SCHEMAS
from edge_daemon.ticket_cache import TicketCache, TicketNotCachedError


def register(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    config: argparse.ArgumentParser,
) -> None:
    schema = commands.add_parser(
        "schema",
        parents=[config],
        help="the columns, types and ranges readings must have, and the label column",
    )
    schema.add_argument("--json", action="store_true", help="machine-readable output")
    schema.set_defaults(handler=schema_command, name="schema")


def schema_command(args: argparse.Namespace) -> int:
    from edge_daemon.predict import active_ticket

    config = load_config(args.config)
    paths = DaemonPaths(config.state_dir)
    try:
        active = active_ticket(paths, TicketCache(paths.tickets_dir, config.fleet_key))
        ticket_id: str | None = active.ticket_id
    except TicketNotCachedError as error:
        print(f"edge-daemon schema: warning: {error}", file=sys.stderr)
        ticket_id = None
    described = SCHEMAS[config.data.schema]().describe()
    document = {"schema": config.data.schema, "ticket_id": ticket_id, **described}
    print(json.dumps(document, indent=2) if args.json else format_schema(document))
    return ExitCode.OK


def format_schema(document: dict[str, Any]) -> str:
    ticket = document["ticket_id"] or "none installed"
    lines = [f"readings schema  {document['schema']}", f"active ticket    {ticket}", ""]
    for column in [*document["columns"], document["label"]]:
        lines.append(f"  {column['name']:<10} {_kind(column)}")
    label = document["label"]
    lines += ["", f"label column: {label['name']} (optional for predict; classes:"]
    lines += [f"  {k}: {v}" for k, v in label["classes"].items()]
    lines[-1] += ")"
    lines.append(f"an empty cell: {document['empty_cell']}")
    return "\n".join(lines)


def _kind(column: dict[str, Any]) -> str:
    if column["type"] == "category":
        return "one of: " + ", ".join(column["values"])
    text = f"{column['type']} {column['minimum']:g}..{column['maximum']:g} {column['unit']}"
    codes = column["means_not_recorded"]
    return text + (f" ({', '.join(f'{c:g}' for c in codes)} = not recorded)" if codes else "")
