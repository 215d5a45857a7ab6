"""`ticket init`: the dense starting ticket a fleet search (`fleet-server find`) prunes.

A fleet search never sees a reading, so what it cannot learn from the fleet comes from here: the
model and its initial weights W_0 (the same seed derivation as `ticket find`, so a fleet search
and a central one from the same --seed start from the same network), and the encoding of
readings, fitted on the rows this command loads (public or proxy rows, e.g. one hospital that
may share them). The ticket keeps every weight (density 1.0) and is signed like any other, so
devices install it only from the fleet's key.
"""

import argparse
from datetime import UTC, datetime
from pathlib import Path

from ticket import __version__
from ticket.bundle import sign_ticket, write_ticket
from ticket.data import load_dataset
from ticket.dense import dense_ticket
from ticket.errors import TicketError
from ticket.manifest import DataSpec
from ticket_cli.cmd_keys import read_private_key
from ticket_cli.commands import HELP


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser(
        "init",
        help=HELP["init"],
        description="Build the model at its initial weights W_0 with every weight kept, and the "
        "encoding of readings fitted on the rows of --data (public or proxy rows: the fleet's "
        "own never leave it). `fleet-server find` prunes it on the fleet.",
    )
    parser.add_argument("--model", required=True, help="model registry name, e.g. heart-mlp")
    parser.add_argument("--data", required=True, help="dataset registry name, e.g. heart-uci")
    parser.add_argument("--out", required=True, type=Path, help="the .ticket file to write")
    parser.add_argument(
        "--sites", type=lambda text: text.split(","), help="fit the encoding on these sites only"
    )
    parser.add_argument("--seed", type=int, default=0, help="W_0's seed (as ticket find's)")
    parser.add_argument("--sign-key", type=Path, help="sign with this private .key file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force:
        raise TicketError(f"{out} already exists; pass --force to overwrite it")
    if args.seed < 0:
        raise TicketError(f"--seed must be >= 0, got {args.seed}")
    signing_key = read_private_key(args.sign_key) if args.sign_key else None
    dataset = load_dataset(args.data, sites=tuple(args.sites) if args.sites else None)
    ticket = dense_ticket(
        args.model,
        DataSpec.from_json(dataset.describe(), at="data"),
        seed=args.seed,
        tool={"name": "ticketfleet", "version": __version__},
        created_at=datetime.now(UTC),
    )
    if signing_key is not None:
        ticket = sign_ticket(ticket, signing_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_ticket(out, ticket)
    signed = "signed" if signing_key is not None else "unsigned: sign it with `ticket sign`"
    print(f"wrote {out}: ticket {ticket.content_id[:12]}, dense, {signed}")
    return 0
