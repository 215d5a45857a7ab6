"""`ticket inspect`: what a ticket holds, how it was found, and who signed it."""

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ticket import crypto
from ticket.bundle import FORMAT_VERSION, Ticket
from ticket.manifest import FleetSpec, MethodSpec
from ticket_cli.cmd_keys import read_model_ticket, read_public_key
from ticket_cli.commands import HELP

INSPECT_SCHEMA = "ticketfleet.inspect.v1"  # docs/ticket-format.md; bump on any breaking change
_MAX_DENSE_NAMES = 4
_MAX_INLINE_CHARS = 60


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "inspect",
        help=HELP["inspect"],
        description="Check the ticket's integrity and describe it. Without --key, signatures "
        "are listed but not checked against a trusted key; with --key, one of the given keys "
        "must have signed it.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the .ticket file")
    parser.add_argument("--json", action="store_true", help=f"print JSON (schema {INSPECT_SCHEMA})")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        type=Path,
        metavar="PUB",
        help="require a signature by this public key; repeat to trust several",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="with --key: also accept a ticket that none of the keys signed",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    keys = [read_public_key(path) for path in args.key]
    ticket = read_model_ticket(
        args.file, trusted_keys=keys, allow_unsigned=args.allow_unsigned or not keys
    )
    trusted = {crypto.key_id(pem) for pem in keys} if keys else None
    if args.json:
        print(json.dumps(inspect_document(ticket, trusted), indent=2, sort_keys=True))
    else:
        # Manifest strings come from the file: never let them drive the terminal.
        print("\n".join(printable(line) for line in report_lines(ticket, trusted)))
    return 0


def inspect_document(ticket: Ticket, trusted: set[str] | None) -> dict[str, Any]:
    """The `--json` output; `trusted` is None when no key was given (nothing was checked)."""
    kept, total = _counts(ticket)
    return {
        "schema": INSPECT_SCHEMA,
        "content_id": ticket.content_id,
        "format_version": FORMAT_VERSION,
        "signatures": [
            {"key_id": s.key_id, "trusted": None if trusted is None else s.key_id in trusted}
            for s in ticket.signatures
        ],
        "kept_weights": kept,
        "total_weights": total,
        "manifest": ticket.manifest.to_json(),
    }


def report_lines(ticket: Ticket, trusted: set[str] | None) -> list[str]:
    """The human-readable report, one line per item."""
    manifest = ticket.manifest
    model, data, method = manifest.model, manifest.data, manifest.method
    kept, total = _counts(ticket)
    lines = [
        f"ticket    {ticket.content_id}  (format {FORMAT_VERSION})",
        f"model     {model.name}  {inline_values(model.args)}".rstrip(),
        f"data      {data.name}  {inline_values(data.to_json(), skip={'name'})}".rstrip(),
        f"method    {_method(method, manifest.rewind_step)}",
    ]
    if method.train is not None:
        # A fleet search records the local schedule its rounds ran, not how to train the ticket.
        whose = "" if manifest.fleet is None else "  (the fleet search's rounds)"
        lines.append(f"training  {inline_values(method.train)}{whose}")
    lines += _fleet_lines(manifest.fleet)
    lines += _encoding_fit_line(manifest.metrics.get("encoding_fit"))
    lines += [
        f"density   {percent_text(manifest.density.overall)}  "
        f"({kept:,} of {total:,} prunable weights kept)",
        *_dense_line(ticket),
        f"created   {manifest.created_at}",
        f"parent    {manifest.parent or 'none'}",
        "",
        *_layer_table(ticket),
        *_metrics_section(manifest.metrics),
        "",
        "signatures",
        *_signature_lines(ticket, trusted),
    ]
    return lines


# ---------------------------------------------------------------- sections


def _method(method: MethodSpec, rewind_step: int) -> str:
    # "rate" and "scope" are not written by `ticket find`; other writers may keep them flat.
    rate = method.extras.get("rate", _get(method.rates, "rate"))
    output_rate = _get(method.rates, "output_rate")
    parts = [method.name]
    scope = method.extras.get("scope", method.pruner)
    if scope is not None:
        parts.append(str(scope))
    if rate is not None:
        parts.append(f"rate {rate}" + (f" (output layer {output_rate})" if output_rate else ""))
    if method.target_density is not None:
        parts.append(f"target density {method.target_density}")
    parts.append(f"rewind step {rewind_step}")
    return ", ".join(parts)


def _fleet_lines(fleet: FleetSpec | None) -> list[str]:
    """Where a fleet search found the ticket, and what it cost (`fleet-server find`)."""
    if fleet is None:
        return []
    privacy = "secure aggregation" if fleet.secagg else "plaintext updates"
    if fleet.dp_epsilon is not None:
        privacy += f", DP epsilon {fleet.dp_epsilon:.2f}"
    return [
        f"fleet     found on the fleet (run {fleet.run_id}): {fleet.devices} devices, "
        f"{fleet.levels} level(s), {fleet.rounds} rounds, {privacy}",
        f"          search cost {fleet.bytes_up:,} bytes up, {fleet.bytes_down:,} bytes down "
        "(rewind step counts rounds)",
    ]


def _encoding_fit_line(fit: object) -> list[str]:
    """Where the encoding of readings was fitted, when the fleet fitted it (--fit-encoding)."""
    if not isinstance(fit, dict) or fit.get("fitted_on") != "fleet":
        return []
    return [
        f"encoding  fitted on the fleet's summed counts (run {fit.get('run_id')}): "
        f"{fit.get('devices')} devices, {fit.get('rows')} readings, no reading left a device"
    ]


def _dense_line(ticket: Ticket) -> list[str]:
    dense = [name for name in ticket.weights if name not in ticket.masks]
    if not dense:
        return []
    values = sum(ticket.weights[name].size for name in dense)
    names = ", ".join(dense[:_MAX_DENSE_NAMES]) + (", ..." if len(dense) > _MAX_DENSE_NAMES else "")
    return [f"dense     {values:,} values in {len(dense)} unpruned parameters ({names})"]


def _layer_table(ticket: Ticket) -> list[str]:
    rows = [
        [
            name,
            "x".join(str(n) for n in mask.shape),
            f"{int(np.count_nonzero(mask)):,}",
            f"{mask.size:,}",
            percent_text(np.count_nonzero(mask) / mask.size if mask.size else 1.0),
        ]
        for name, mask in ticket.masks.items()
    ]
    return _table(["layer", "shape", "kept", "total", "density"], rows, numeric_from=2)


def _metrics_section(metrics: Mapping[str, Any]) -> list[str]:
    levels = metrics.get("levels")
    if isinstance(levels, list) and levels and all(isinstance(row, dict) for row in levels):
        return ["", "metrics by pruning level", *_levels_table(levels)]
    searched = metrics.get("search_levels")  # a fleet search's levels (fleet-server find)
    if isinstance(searched, list) and searched and all(isinstance(r, dict) for r in searched):
        return ["", "fleet search by level", *_search_table(searched)]
    shown = [f"  {key}  {text}" for key, value in metrics.items() if (text := _short(value))]
    return ["", "metrics" if shown else "metrics   none", *shown]


def _search_table(levels: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per level of a fleet search: what it cost and the density it pruned to."""
    headers = ["level", "density after", "rounds", "devices", "bytes up", "bytes down", "loss"]
    keys = ("rounds", "devices", "bytes_up", "bytes_down", "train_loss")
    rows = [
        [
            number_text(row.get("level", index)),
            percent_text(row.get("density_after")),
            *(number_text(row.get(key)) for key in keys),
        ]
        for index, row in enumerate(levels)
    ]
    return _table(headers, rows, numeric_from=1)


def _levels_table(levels: Sequence[Mapping[str, Any]]) -> list[str]:
    # A level holds its metrics flat or under "ticket" (what `ticket find` writes), and may
    # carry the paper's controls under "controls" (shown by their accuracy). Any other shape
    # shows as "-": a signed manifest may hold anything beyond the required keys.
    found = [row["ticket"] if isinstance(row.get("ticket"), dict) else row for row in levels]
    has_auc = any(_get(metrics, "auc") is not None for metrics in found)
    columns = ["accuracy", *(["auc"] if has_auc else []), "loss"]
    controls = sorted(
        {c for row in levels if isinstance(row.get("controls"), dict) for c in row["controls"]}
    )
    headers = ["level", "density", *columns, *(f"{c} acc" for c in controls)]
    rows = [
        [
            number_text(row.get("level", index)),
            percent_text(row.get("density")),
            *(number_text(_get(metrics, key)) for key in columns),
            *(number_text(_get(row, "controls", c, "accuracy")) for c in controls),
        ]
        for index, (row, metrics) in enumerate(zip(levels, found, strict=True))
    ]
    return _table(headers, rows, numeric_from=0)


def _signature_lines(ticket: Ticket, trusted: set[str] | None) -> list[str]:
    if not ticket.signatures:
        return ["  unsigned"]
    lines = []
    for signature in ticket.signatures:
        if trusted is None:
            status = "not checked against a trusted key"
        elif signature.key_id in trusted:
            status = "verified, trusted key"
        else:
            status = "not a trusted key, not checked"
        lines.append(f"  signed by {signature.key_id} ({status})")
    return lines


# ---------------------------------------------------------------- formatting


def _counts(ticket: Ticket) -> tuple[int, int]:
    """(kept, total) over the prunable weights; dense parameters are not counted."""
    kept = sum(int(np.count_nonzero(mask)) for mask in ticket.masks.values())
    return kept, sum(mask.size for mask in ticket.masks.values())


def _table(headers: list[str], rows: list[list[str]], *, numeric_from: int) -> list[str]:
    """Columns padded to width; columns from `numeric_from` on are right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if index >= numeric_from else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def inline_values(values: Mapping[str, Any], *, skip: set[str] | None = None) -> str:
    """`key=value` pairs for the short values; deeper structure and long values are left out."""
    parts = []
    for key in sorted(values):
        if skip and key in skip:
            continue
        text = _short(values[key])
        if text is not None and len(text) <= _MAX_INLINE_CHARS:
            parts.append(f"{key}={text}")
    return " ".join(parts)


def _short(value: Any) -> str | None:
    """A scalar, a list of scalars or an object of scalars as compact text; None otherwise."""
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        return "[" + ",".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict) and all(_is_scalar(v) for v in value.values()):
        return ",".join(f"{k}:{_scalar(v)}" for k, v in value.items())
    return _scalar(value) if _is_scalar(value) else None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _get(value: Any, *keys: str) -> Any:
    """`value[k1][k2]...`, or None where a step is missing or not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def printable(line: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def percent_text(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "-"


def number_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"
