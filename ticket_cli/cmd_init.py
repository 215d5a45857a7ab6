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

import numpy as np

from ticket import __version__
from ticket.bundle import build_ticket, sign_ticket, write_ticket
from ticket.data import load_dataset
from ticket.errors import TicketError
from ticket.manifest import DataSpec, Density, Manifest, MethodSpec, ModelSpec, measure_density
from ticket.masks import prunable_names
from ticket.models import build_model
from ticket.prune import derive_seed
from ticket.train import snapshot
from ticket_cli.cmd_keys import read_private_key
from ticket_cli.commands import HELP
from ticket_cli.find_runner import merged_model_args

METHOD = "init"  # the manifest's method name of a dense starting ticket


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
    model_args = merged_model_args(dataset, {})
    model = build_model(args.model, model_args, derive_seed(args.seed, "init"))
    weights = {name: value.numpy() for name, value in snapshot(model).items()}
    masks = {name: np.ones(weights[name].shape, np.bool_) for name in prunable_names(model)}
    manifest = Manifest(
        model=ModelSpec(name=args.model, args=model_args),
        data=DataSpec.from_json(dataset.describe(), at="data"),
        method=MethodSpec(name=METHOD, seed=args.seed),
        rewind_step=0,
        density=Density.from_json(measure_density(masks), at="density"),
        metrics={},
        parent=None,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        tool={"name": "ticketfleet", "version": __version__},
    )
    ticket = build_ticket(manifest, masks, weights)
    if signing_key is not None:
        ticket = sign_ticket(ticket, signing_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_ticket(out, ticket)
    signed = "signed" if signing_key is not None else "unsigned: sign it with `ticket sign`"
    print(f"wrote {out}: ticket {ticket.content_id[:12]}, dense, {signed}")
    return 0
